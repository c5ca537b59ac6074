package dynamostore

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

// Attribute names of the other row fields. Names follow the event's JSON
// wire format so a row reads the same in the console as on the stream.
// Empty strings, zero numbers and false are not written (a missing attribute
// reads back as the zero value): it keeps items small, and DynamoDB refuses
// empty strings in index keys, which the key fields never are.
const (
	attrType          = "type"
	attrSchemaVersion = "schemaVersion"
	attrAuthor        = "author"
	attrExecutionID   = "executionId"
	attrOrder         = "order"
	attrTargetSystem  = "targetSystem"
	attrHost          = "host"
	attrRunnerID      = "runnerId"
	attrLockToken     = "lockToken"
	attrDurationNs    = "durationNs"
	attrErrorMessage  = "errorMessage"
	attrErrorTrace    = "errorTrace"
	attrErrorTraceGz  = "errorTraceGz" // gzip of a trace longer than compressTraceOver
	attrMetadata      = "metadata"
	attrRecovery      = "recovery"
	attrTransactional = "transactional"
	attrResolution    = "resolution"
	attrOperator      = "operator"
	attrReason        = "reason"
	attrEventID       = "eventId"
	attrUpdatedAt     = "updatedAt"
	// attrHash is the record's stream hash (stores.Record.Hash), attrPrevHash
	// the event's link to its predecessor. Items written before the hash
	// chain lack both; they read back as "".
	attrHash     = "hash"
	attrPrevHash = "prevHash"
	// attrSigner, attrSignature and attrTrust (stores.Record's, and the
	// issue's Trust) came with signed events; items without them read "".
	attrSigner    = "signer"
	attrSignature = "signature"
	attrTrust     = "trust"
	// attrPrevSeq and attrPosition (schema version 4) and attrChain (the
	// chain verdict, on rows and issues) are absent when zero or empty.
	attrPrevSeq  = "prevSeq"
	attrPosition = "position"
	attrChain    = "chain"
)

// compressTraceOver is the trace length above which a trace is stored
// gzip-compressed. Stack traces compress 5 to 20 times, and DynamoDB's item
// limit (400 KB, counted in UTF-8 bytes with attribute names) would
// otherwise refuse an event the stream accepted (NATS allows 1 MB), which
// would stall the projector on that batch forever.
const compressTraceOver = 8 << 10

// maxItemBytes is DynamoDB's item size limit.
const maxItemBytes = 400 << 10

type item = map[string]types.AttributeValue

// encoder builds an item, leaving out zero values.
type encoder item

func (e encoder) s(name, v string) {
	if v != "" {
		e[name] = &types.AttributeValueMemberS{Value: v}
	}
}

func (e encoder) u(name string, v uint64) {
	if v != 0 {
		e[name] = &types.AttributeValueMemberN{Value: strconv.FormatUint(v, 10)}
	}
}

func (e encoder) i(name string, v int64) {
	if v != 0 {
		e[name] = &types.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
	}
}

func (e encoder) b(name string, v bool) {
	if v {
		e[name] = &types.AttributeValueMemberBOOL{Value: true}
	}
}

func (e encoder) time(name string, t time.Time) { e.s(name, stores.FormatTime(t)) }

func (e encoder) trace(t string) error {
	if len(t) <= compressTraceOver {
		e.s(attrErrorTrace, t)
		return nil
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := io.WriteString(zw, t); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	e[attrErrorTraceGz] = &types.AttributeValueMemberB{Value: buf.Bytes()}
	return nil
}

func (e encoder) metadata(md map[string]string) {
	if len(md) == 0 {
		return
	}
	m := make(item, len(md))
	for k, v := range md {
		m[k] = &types.AttributeValueMemberS{Value: v} // "" is allowed outside keys
	}
	e[attrMetadata] = &types.AttributeValueMemberM{Value: m}
}

// recordItem is the changeLog row of r, keyed by its sequence. State is
// the state the row stores (stores.StateOf), which History filters on and
// returns as Record.RowState.
func recordItem(r stores.Record) (item, error) {
	e := encoder{}
	e.u(attrSeq, r.Seq)
	e.s(attrID, r.ID)
	e.s(attrShard, shardAll)
	e.s(attrType, string(r.Type))
	e.s(attrState, string(stores.StateOf(r)))
	e.i(attrSchemaVersion, int64(r.SchemaVersion))
	e.s(attrPipeline, r.Pipeline)
	e.s(attrChangeID, r.ChangeID)
	e.s(attrAuthor, r.Author)
	e.s(attrExecutionID, r.ExecutionID)
	e.s(attrOrder, r.Order)
	e.s(attrTargetSystem, r.TargetSystem)
	e.s(attrHost, r.Host)
	e.s(attrRunnerID, r.RunnerID)
	e.u(attrLockToken, r.LockToken)
	e.time(attrOccurredAt, r.OccurredAt)
	e.i(attrDurationNs, int64(r.Duration))
	e.s(attrErrorMessage, r.ErrorMessage)
	if err := e.trace(r.ErrorTrace); err != nil {
		return nil, err
	}
	e.metadata(r.Metadata)
	e.s(attrRecovery, string(r.Recovery))
	e.b(attrTransactional, r.Transactional)
	e.s(attrResolution, string(r.Resolution))
	e.s(attrOperator, r.Operator)
	e.s(attrReason, r.Reason)
	e.s(attrHash, r.Hash)
	e.s(attrPrevHash, r.PrevHash)
	e.u(attrPrevSeq, r.PrevSeq)
	e.u(attrPosition, r.Position)
	e.s(attrSigner, r.Signer)
	e.s(attrSignature, r.Signature)
	e.s(attrTrust, r.Trust)
	e.s(attrChain, r.Chain)
	// Last, so the size counted is that of the whole item.
	return item(e), checkSize(e, fmt.Sprintf("event %s (seq %d)", r.ID, r.Seq))
}

// issueItem is the issue row of i.
func issueItem(i stores.Issue) (item, error) {
	e := encoder{}
	e.s(attrPipeline, i.Pipeline)
	e.s(attrChangeID, i.ChangeID)
	e.u(attrSeq, i.Seq)
	e.s(attrShard, shardAll)
	e.s(attrStatus, string(i.Status))
	e.s(attrState, string(i.State))
	e.s(attrEventID, i.EventID)
	e.s(attrExecutionID, i.ExecutionID)
	e.s(attrAuthor, i.Author)
	e.s(attrTargetSystem, i.TargetSystem)
	e.s(attrRecovery, string(i.Recovery))
	e.s(attrErrorMessage, i.ErrorMessage)
	if err := e.trace(i.ErrorTrace); err != nil {
		return nil, err
	}
	e.time(attrUpdatedAt, i.UpdatedAt)
	e.s(attrOperator, i.Operator)
	e.s(attrReason, i.Reason)
	e.s(attrTrust, i.Trust)
	e.s(attrChain, i.Chain)
	return item(e), checkSize(e, "issue of event "+i.EventID)
}

// checkSize rejects an item DynamoDB would refuse, before anything of the
// batch is written. The count follows DynamoDB's rules (UTF-8 bytes of
// names and values, about 1 byte per 2 digits of a number), rounded up.
func checkSize(e encoder, what string) error {
	if n := itemBytes(item(e)); n > maxItemBytes {
		return fmt.Errorf("%w: %s is %d bytes as a DynamoDB item, over the %d byte limit even with its trace compressed",
			stores.ErrInvalidRecord, what, n, maxItemBytes)
	}
	return nil
}

func itemBytes(it item) int {
	n := 0
	for k, v := range it {
		n += len(k) + valueBytes(v)
	}
	return n
}

func valueBytes(v types.AttributeValue) int {
	switch v := v.(type) {
	case *types.AttributeValueMemberS:
		return len(v.Value)
	case *types.AttributeValueMemberN:
		return len(v.Value)/2 + 2
	case *types.AttributeValueMemberB:
		return len(v.Value)
	case *types.AttributeValueMemberM:
		return 3 + len(v.Value) + itemBytes(v.Value)
	}
	return 1
}

// decoder reads an item, keeping the first error.
type decoder struct {
	it  item
	err error
}

func (d *decoder) fail(name string, err error) {
	if d.err == nil {
		d.err = fmt.Errorf("attribute %s: %w", name, err)
	}
}

func (d *decoder) s(name string) string {
	switch v := d.it[name].(type) {
	case nil:
	case *types.AttributeValueMemberS:
		return v.Value
	default:
		d.fail(name, fmt.Errorf("want a string, got %T", v))
	}
	return ""
}

func (d *decoder) num(name string) string {
	switch v := d.it[name].(type) {
	case nil:
	case *types.AttributeValueMemberN:
		return v.Value
	default:
		d.fail(name, fmt.Errorf("want a number, got %T", v))
	}
	return ""
}

func (d *decoder) u(name string) uint64 {
	s := d.num(name)
	if s == "" {
		return 0
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		d.fail(name, err)
	}
	return n
}

func (d *decoder) i(name string) int64 {
	s := d.num(name)
	if s == "" {
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		d.fail(name, err)
	}
	return n
}

func (d *decoder) b(name string) bool {
	v, ok := d.it[name].(*types.AttributeValueMemberBOOL)
	return ok && v.Value
}

func (d *decoder) time(name string) time.Time {
	s := d.s(name)
	t, err := stores.ParseTime(s)
	if err != nil {
		d.fail(name, err)
	}
	return t
}

func (d *decoder) trace() string {
	gz, ok := d.it[attrErrorTraceGz].(*types.AttributeValueMemberB)
	if !ok {
		return d.s(attrErrorTrace)
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz.Value))
	if err != nil {
		d.fail(attrErrorTraceGz, err)
		return ""
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		d.fail(attrErrorTraceGz, err)
	}
	return string(b)
}

func (d *decoder) metadata() map[string]string {
	m, ok := d.it[attrMetadata].(*types.AttributeValueMemberM)
	if !ok {
		return nil
	}
	out := make(map[string]string, len(m.Value))
	for k, v := range m.Value {
		s, ok := v.(*types.AttributeValueMemberS)
		if !ok {
			d.fail(attrMetadata+"."+k, fmt.Errorf("want a string, got %T", v))
			continue
		}
		out[k] = s.Value
	}
	return out
}

func decodeRecord(it item) (stores.Record, error) {
	d := decoder{it: it}
	r := stores.Record{Seq: d.u(attrSeq), Hash: d.s(attrHash), Event: events.Event{
		ID:            d.s(attrID),
		Type:          events.Type(d.s(attrType)),
		SchemaVersion: int(d.i(attrSchemaVersion)),
		Pipeline:      d.s(attrPipeline),
		ChangeID:      d.s(attrChangeID),
		Author:        d.s(attrAuthor),
		ExecutionID:   d.s(attrExecutionID),
		Order:         d.s(attrOrder),
		TargetSystem:  d.s(attrTargetSystem),
		Host:          d.s(attrHost),
		RunnerID:      d.s(attrRunnerID),
		LockToken:     d.u(attrLockToken),
		OccurredAt:    d.time(attrOccurredAt),
		Duration:      time.Duration(d.i(attrDurationNs)),
		ErrorMessage:  d.s(attrErrorMessage),
		ErrorTrace:    d.trace(),
		Metadata:      d.metadata(),
		Recovery:      events.Recovery(d.s(attrRecovery)),
		Transactional: d.b(attrTransactional),
		Resolution:    events.Resolution(d.s(attrResolution)),
		Operator:      d.s(attrOperator),
		Reason:        d.s(attrReason),
		PrevHash:      d.s(attrPrevHash),
		PrevSeq:       d.u(attrPrevSeq),
		Position:      d.u(attrPosition),
	}}
	r.Signer, r.Signature, r.Trust, r.Chain = d.s(attrSigner), d.s(attrSignature), d.s(attrTrust), d.s(attrChain)
	r.RowState = events.State(d.s(attrState))
	if d.err != nil {
		return r, fmt.Errorf("dynamostore: changeLog row at seq %d: %w", r.Seq, d.err)
	}
	return r, nil
}

func decodeIssue(it item) (stores.Issue, error) {
	d := decoder{it: it}
	i := stores.Issue{
		Pipeline:     d.s(attrPipeline),
		ChangeID:     d.s(attrChangeID),
		Status:       stores.IssueStatus(d.s(attrStatus)),
		State:        events.State(d.s(attrState)),
		Seq:          d.u(attrSeq),
		EventID:      d.s(attrEventID),
		ExecutionID:  d.s(attrExecutionID),
		Author:       d.s(attrAuthor),
		TargetSystem: d.s(attrTargetSystem),
		Recovery:     events.Recovery(d.s(attrRecovery)),
		ErrorMessage: d.s(attrErrorMessage),
		ErrorTrace:   d.trace(),
		UpdatedAt:    d.time(attrUpdatedAt),
		Operator:     d.s(attrOperator),
		Reason:       d.s(attrReason),
		Trust:        d.s(attrTrust),
		Chain:        d.s(attrChain),
	}
	if d.err != nil {
		return i, fmt.Errorf("dynamostore: issue row %s/%s: %w", i.Pipeline, i.ChangeID, d.err)
	}
	return i, nil
}

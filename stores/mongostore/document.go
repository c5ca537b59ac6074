package mongostore

import (
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

// Field names shared by documents, filters and indexes.
const (
	fID        = "_id"
	fSeq       = "seq"
	fPipeline  = "pipeline"
	fChangeID  = "changeId"
	fState     = "state"
	fStatus    = "status"
	fAuthor    = "author"
	fTarget    = "targetSystem"
	fOccurred  = "occurredAt"
	fOccurNano = "occurredAtNanos"
	fUpdated   = "updatedAt"
)

// logDoc is a changeLog document: one stream message, keyed by its
// sequence. The event id is a field like the others: an event published
// again is a document of its own.
type logDoc struct {
	Seq  int64  `bson:"_id"`
	ID   text   `bson:"eventId"`
	Type string `bson:"type"`
	// State is the state the row stores (stores.StateOf): History filters
	// on it and returns it as Record.RowState.
	State           string        `bson:"state"`
	SchemaVersion   int32         `bson:"schemaVersion"`
	Pipeline        text          `bson:"pipeline"`
	ChangeID        text          `bson:"changeId"`
	Author          text          `bson:"author,omitempty"`
	ExecutionID     text          `bson:"executionId,omitempty"`
	Order           text          `bson:"order,omitempty"`
	TargetSystem    text          `bson:"targetSystem,omitempty"`
	Host            text          `bson:"host,omitempty"`
	RunnerID        text          `bson:"runnerId,omitempty"`
	LockToken       int64         `bson:"lockToken,omitempty"` // the uint64's bits
	OccurredAt      bson.DateTime `bson:"occurredAt"`
	OccurredAtNanos int32         `bson:"occurredAtNanos,omitempty"`
	DurationNanos   int64         `bson:"durationNanos,omitempty"`
	ErrorMessage    text          `bson:"errorMessage,omitempty"`
	ErrorTrace      text          `bson:"errorTrace,omitempty"`
	Metadata        []entry       `bson:"metadata,omitempty"`
	Recovery        string        `bson:"recovery"`
	Transactional   bool          `bson:"transactional,omitempty"`
	Resolution      string        `bson:"resolution,omitempty"`
	Operator        text          `bson:"operator,omitempty"`
	Reason          text          `bson:"reason,omitempty"`
	// Fields left out when empty or zero, as events without them (an
	// unsigned event, one written before the hash chain or before schema
	// version 4) have them: absent, they read as "" and 0.
	Hash      text  `bson:"hash,omitempty"`
	PrevHash  text  `bson:"prevHash,omitempty"`
	PrevSeq   int64 `bson:"prevSeq,omitempty"`  // at most 2^63-1 (events.Validate)
	Position  int64 `bson:"position,omitempty"` // at most PrevSeq+1
	Signer    text  `bson:"signer,omitempty"`
	Signature text  `bson:"signature,omitempty"`
	Trust     text  `bson:"trust,omitempty"`
	Chain     text  `bson:"chain,omitempty"`
}

// entry is one metadata pair. Metadata is an array of pairs, not a
// subdocument, because its keys are arbitrary: MongoDB restricts field names
// with '.' or a leading '$' (FerretDB rejects them outright).
type entry struct {
	K text `bson:"k"`
	V text `bson:"v"`
}

// issueDoc is an issues document: the projection of the newest event of a
// change. It replaces the stored document as a whole, so it never mixes
// fields of two events.
type issueDoc struct {
	ID             text          `bson:"_id"` // see issueID
	Pipeline       text          `bson:"pipeline"`
	ChangeID       text          `bson:"changeId"`
	Status         string        `bson:"status"`
	State          string        `bson:"state"`
	Seq            int64         `bson:"seq"`
	EventID        text          `bson:"eventId"`
	ExecutionID    text          `bson:"executionId,omitempty"`
	Author         text          `bson:"author,omitempty"`
	TargetSystem   text          `bson:"targetSystem,omitempty"`
	Recovery       string        `bson:"recovery"`
	ErrorMessage   text          `bson:"errorMessage,omitempty"`
	ErrorTrace     text          `bson:"errorTrace,omitempty"`
	UpdatedAt      bson.DateTime `bson:"updatedAt"`
	UpdatedAtNanos int32         `bson:"updatedAtNanos,omitempty"`
	Operator       text          `bson:"operator,omitempty"`
	Reason         text          `bson:"reason,omitempty"`
	Trust          text          `bson:"trust,omitempty"`
	Chain          text          `bson:"chain,omitempty"`
}

// checkpointDoc holds one consumer's progress.
type checkpointDoc struct {
	ID  text  `bson:"_id"`
	Seq int64 `bson:"seq"`
}

func toLogDoc(r stores.Record) logDoc {
	at, nanos := splitTime(r.OccurredAt)
	d := logDoc{
		Seq: int64(r.Seq), ID: text(r.ID), Type: string(r.Type), State: string(stores.StateOf(r)),
		SchemaVersion: int32(r.SchemaVersion), Pipeline: text(r.Pipeline), ChangeID: text(r.ChangeID),
		Author: text(r.Author), ExecutionID: text(r.ExecutionID), Order: text(r.Order),
		TargetSystem: text(r.TargetSystem), Host: text(r.Host), RunnerID: text(r.RunnerID),
		LockToken: int64(r.LockToken), OccurredAt: at, OccurredAtNanos: nanos,
		DurationNanos: int64(r.Duration), ErrorMessage: text(r.ErrorMessage), ErrorTrace: text(r.ErrorTrace),
		Recovery: string(r.Recovery), Transactional: r.Transactional, Resolution: string(r.Resolution),
		Operator: text(r.Operator), Reason: text(r.Reason), Hash: text(r.Hash), PrevHash: text(r.PrevHash),
		PrevSeq: int64(r.PrevSeq), Position: int64(r.Position),
		Signer: text(r.Signer), Signature: text(r.Signature), Trust: text(r.Trust), Chain: text(r.Chain),
	}
	if len(r.Metadata) > 0 {
		keys := make([]string, 0, len(r.Metadata))
		for k := range r.Metadata {
			keys = append(keys, k)
		}
		slices.Sort(keys) // one event, one document: byte-identical on replay
		d.Metadata = make([]entry, len(keys))
		for i, k := range keys {
			d.Metadata[i] = entry{K: text(k), V: text(r.Metadata[k])}
		}
	}
	return d
}

func (d logDoc) record() stores.Record {
	r := stores.Record{Seq: uint64(d.Seq), Hash: string(d.Hash), Event: events.Event{
		ID: string(d.ID), Type: events.Type(d.Type), SchemaVersion: int(d.SchemaVersion),
		Pipeline: string(d.Pipeline), ChangeID: string(d.ChangeID), Author: string(d.Author),
		ExecutionID: string(d.ExecutionID), Order: string(d.Order), TargetSystem: string(d.TargetSystem),
		Host: string(d.Host), RunnerID: string(d.RunnerID), LockToken: uint64(d.LockToken),
		OccurredAt: joinTime(d.OccurredAt, d.OccurredAtNanos), Duration: time.Duration(d.DurationNanos),
		ErrorMessage: string(d.ErrorMessage), ErrorTrace: string(d.ErrorTrace),
		Recovery: events.Recovery(d.Recovery), Transactional: d.Transactional,
		Resolution: events.Resolution(d.Resolution), Operator: string(d.Operator), Reason: string(d.Reason),
		PrevHash: string(d.PrevHash), PrevSeq: uint64(d.PrevSeq), Position: uint64(d.Position),
	}}
	r.Signer, r.Signature, r.Trust, r.Chain = string(d.Signer), string(d.Signature), string(d.Trust), string(d.Chain)
	r.RowState = events.State(d.State)
	if len(d.Metadata) > 0 {
		r.Metadata = make(map[string]string, len(d.Metadata))
		for _, e := range d.Metadata {
			r.Metadata[string(e.K)] = string(e.V)
		}
	}
	return r
}

// issueID is an issue's _id: "pipeline/changeId", with '%' and '/' in the
// pipeline escaped so that the first '/' always ends it and two changes
// never share an id. A string rather than a {pipeline, changeId} document
// because FerretDB looks a string _id up by index but scans the whole
// collection for a document _id (12 ms per upsert at 1,000 issues).
func issueID(pipeline, changeID string) text {
	return text(pipelineEscaper.Replace(pipeline) + "/" + changeID)
}

var pipelineEscaper = strings.NewReplacer("%", "%25", "/", "%2F")

func toIssueDoc(i stores.Issue) issueDoc {
	at, nanos := splitTime(i.UpdatedAt)
	return issueDoc{
		ID: issueID(i.Pipeline, i.ChangeID), Pipeline: text(i.Pipeline), ChangeID: text(i.ChangeID),
		Status: string(i.Status), State: string(i.State), Seq: int64(i.Seq), EventID: text(i.EventID),
		ExecutionID: text(i.ExecutionID), Author: text(i.Author), TargetSystem: text(i.TargetSystem),
		Recovery: string(i.Recovery), ErrorMessage: text(i.ErrorMessage), ErrorTrace: text(i.ErrorTrace),
		UpdatedAt: at, UpdatedAtNanos: nanos, Operator: text(i.Operator), Reason: text(i.Reason),
		Trust: text(i.Trust), Chain: text(i.Chain),
	}
}

func (d issueDoc) issue() stores.Issue {
	return stores.Issue{
		Pipeline: string(d.Pipeline), ChangeID: string(d.ChangeID), Status: stores.IssueStatus(d.Status),
		State: events.State(d.State), Seq: uint64(d.Seq), EventID: string(d.EventID),
		ExecutionID: string(d.ExecutionID), Author: string(d.Author), TargetSystem: string(d.TargetSystem),
		Recovery: events.Recovery(d.Recovery), ErrorMessage: string(d.ErrorMessage),
		ErrorTrace: string(d.ErrorTrace), UpdatedAt: joinTime(d.UpdatedAt, d.UpdatedAtNanos),
		Operator: string(d.Operator), Reason: string(d.Reason), Trust: string(d.Trust), Chain: string(d.Chain),
	}
}

// splitTime splits t into a BSON date (milliseconds, rounded down) and the
// nanoseconds past that millisecond. The date keeps time queries, indexes
// and shell output natural; the remainder makes the round trip exact.
func splitTime(t time.Time) (bson.DateTime, int32) {
	return bson.NewDateTimeFromTime(t), int32(t.Nanosecond() % int(time.Millisecond))
}

func joinTime(at bson.DateTime, nanos int32) time.Time {
	return time.UnixMilli(int64(at)).Add(time.Duration(nanos)).UTC()
}

// sinceFilter selects occurredAt >= t exactly: every document from t's
// millisecond on, except those in that millisecond but before t. The range
// on the date alone is what an index bounds on.
func sinceFilter(t time.Time) bson.D {
	at, nanos := splitTime(t)
	f := bson.D{{Key: fOccurred, Value: bson.D{{Key: "$gte", Value: at}}}}
	if nanos > 0 {
		f = append(f, bson.E{Key: "$nor", Value: bson.A{bson.D{
			{Key: fOccurred, Value: at}, {Key: fOccurNano, Value: bson.D{{Key: "$lt", Value: nanos}}},
		}}})
	}
	return f
}

// text is a string stored as a BSON string when it can be, and as generic
// binary (the exact bytes) when it contains NUL or is not valid UTF-8.
// Genuine MongoDB stores such strings as they are, but FerretDB keeps
// documents in PostgreSQL jsonb, which cannot hold U+0000, and BSON strings
// must be UTF-8 anyway. Event fields are arbitrary text (a stack trace may
// carry a NUL), and the audit must keep them byte for byte. Filters use the
// same encoding, so equality on a text field matches whichever form it took.
type text string

const binarySubtype = 0x00 // generic binary

func (t text) plain() bool {
	return utf8.ValidString(string(t)) && !strings.Contains(string(t), "\x00")
}

// MarshalBSONValue implements bson.ValueMarshaler.
func (t text) MarshalBSONValue() (byte, []byte, error) {
	var v any = string(t)
	if !t.plain() {
		v = bson.Binary{Subtype: binarySubtype, Data: []byte(t)}
	}
	typ, data, err := bson.MarshalValue(v)
	return byte(typ), data, err
}

// UnmarshalBSONValue implements bson.ValueUnmarshaler.
func (t *text) UnmarshalBSONValue(typ byte, data []byte) error {
	rv := bson.RawValue{Type: bson.Type(typ), Value: data}
	switch rv.Type {
	case bson.TypeString:
		s, ok := rv.StringValueOK()
		if !ok {
			return fmt.Errorf("mongostore: malformed string value")
		}
		*t = text(s)
	case bson.TypeBinary:
		_, b, ok := rv.BinaryOK()
		if !ok {
			return fmt.Errorf("mongostore: malformed binary value")
		}
		*t = text(b)
	case bson.TypeNull, bson.TypeUndefined:
		*t = ""
	default:
		return fmt.Errorf("mongostore: want a string or binary, got BSON %s", rv.Type)
	}
	return nil
}

package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"time"
)

// Wire-format constants.
const (
	SpecVersion     = "1.0"              // CloudEvents spec version
	TypePrefix      = "io.auditflow."    // CloudEvents type = TypePrefix + Type
	DataContentType = "application/json" // the only data encoding accepted
	// DataSchemaURI names the JSON Schema of data (see schema/).
	DataSchemaURI = "https://auditflow.dev/schemas/execution-event/v4.json"
	// SourcePrefix starts the CloudEvents source: SourcePrefix + pipeline.
	SourcePrefix = "urn:auditflow:pipeline:"
)

// envelope is the CloudEvents structured-mode document. Extension attributes
// (traceparent, …) are accepted and ignored: CloudEvents allows them.
type envelope struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Time            string          `json:"time"`
	Subject         string          `json:"subject,omitempty"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	DataSchema      string          `json:"dataschema,omitempty"`
	Data            json.RawMessage `json:"data"`
}

// data is the event payload. Decoding it rejects unknown fields: a field
// this version does not know would otherwise be silently dropped from the
// audit record. New fields come with a new schema version.
type data struct {
	SchemaVersion *int              `json:"schemaVersion"`
	Pipeline      string            `json:"pipeline"`
	ChangeID      string            `json:"changeId"`
	Author        string            `json:"author,omitempty"`
	ExecutionID   string            `json:"executionId,omitempty"`
	Order         string            `json:"order,omitempty"`
	TargetSystem  string            `json:"targetSystem,omitempty"`
	Host          string            `json:"host,omitempty"`
	RunnerID      string            `json:"runnerId,omitempty"`
	LockToken     uint64            `json:"lockToken,omitempty"`
	DurationMs    int64             `json:"durationMs,omitempty"`
	ErrorMessage  string            `json:"errorMessage,omitempty"`
	ErrorTrace    string            `json:"errorTrace,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	Recovery      Recovery          `json:"recovery,omitempty"`
	Transactional bool              `json:"transactional,omitempty"`
	Resolution    Resolution        `json:"resolution,omitempty"`
	Operator      string            `json:"operator,omitempty"`
	Reason        string            `json:"reason,omitempty"`
	PrevHash      string            `json:"prevHash,omitempty"`
	PrevSeq       uint64            `json:"prevSeq,omitempty"`
	Position      uint64            `json:"position,omitempty"`
}

// Encode validates e and returns its CloudEvents JSON. Duration is written
// in whole milliseconds and OccurredAt in UTC; an event of the current
// version placed after nothing (no PrevSeq, PrevHash or Position) is
// written as its change's first (Position 1). An event whose encoding is
// over MaxEventBytes fails with ErrTooLarge.
func Encode(e Event) ([]byte, error) {
	if e.SchemaVersion == 0 {
		e.SchemaVersion = writeVersion(e.Type)
	}
	if e.Recovery == "" {
		e.Recovery = ManualIntervention
	}
	if e.SchemaVersion >= ChainVersion && e.Position == 0 && e.PrevSeq == 0 && e.PrevHash == "" {
		e.Position = 1 // placed after nothing: its change's first event
	}
	if err := Validate(e); err != nil {
		return nil, err
	}
	v := e.SchemaVersion
	d, err := json.Marshal(data{
		SchemaVersion: &v, Pipeline: e.Pipeline, ChangeID: e.ChangeID, Author: e.Author,
		ExecutionID: e.ExecutionID, Order: e.Order, TargetSystem: e.TargetSystem, Host: e.Host,
		RunnerID: e.RunnerID, LockToken: e.LockToken, DurationMs: e.Duration.Milliseconds(),
		ErrorMessage: e.ErrorMessage, ErrorTrace: e.ErrorTrace, Metadata: e.Metadata,
		Recovery: e.Recovery, Transactional: e.Transactional, Resolution: e.Resolution,
		Operator: e.Operator, Reason: e.Reason, PrevHash: e.PrevHash, PrevSeq: e.PrevSeq, Position: e.Position,
	})
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(envelope{
		SpecVersion: SpecVersion, ID: e.ID, Source: SourcePrefix + e.Pipeline,
		Type: TypePrefix + string(e.Type), Time: e.OccurredAt.UTC().Format(time.RFC3339Nano),
		Subject: e.ChangeID, DataContentType: DataContentType, DataSchema: DataSchemaURI, Data: d,
	})
	if err != nil {
		return nil, err
	}
	if len(b) > MaxEventBytes {
		return nil, eventTooLarge(len(b))
	}
	return b, nil
}

func eventTooLarge(n int) *Error {
	return fieldErr(ErrTooLarge, "", "the encoded event is %d bytes; the limit is %d (events.MaxEventBytes)", n, MaxEventBytes)
}

// EventTooLarge reports whether err says that an encoded event as a whole
// is over MaxEventBytes (rather than one of its fields over its limit).
func EventTooLarge(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Err == ErrTooLarge && e.Field == ""
}

// Decode parses and validates a CloudEvents JSON event. Every failure is an
// *Error naming the field at fault. An event over MaxEventBytes, or with a
// field over its limit, fails with ErrTooLarge. Decoding is strict: a
// document with a key twice in one object (at any depth, however it is
// escaped), invalid UTF-8 or an escaped lone surrogate anywhere, or a key
// of the event's in another case fails with ErrNotStrict, rather than
// being read the way encoding/json happens to (the last duplicate,
// U+FFFD) while other readers read it another way.
//
// Decode does not know where the event was read from: a reader of the
// stream also checks that the subject is the event's (CheckSubject).
func Decode(b []byte) (Event, error) {
	if len(b) > MaxEventBytes {
		return Event{}, eventTooLarge(len(b))
	}
	var env envelope
	var d data
	if !parseFast(b, &env, &d) {
		env, d = envelope{}, data{}
		if err := parseSlow(b, &env, &d); err != nil {
			return Event{}, err
		}
	}
	return build(env, d)
}

// parseSlow reads an event with encoding/json and checks what parseFast
// checks, saying what is wrong. It first refuses what encoding/json would
// read one way among several (checkStrict): duplicate keys, invalid UTF-8,
// lone surrogates, keys in another case.
func parseSlow(b []byte, env *envelope, d *data) error {
	if err := checkStrict(b); err != nil {
		return err
	}
	if err := json.Unmarshal(b, env); err != nil {
		return jsonErr(err, "")
	}
	if env.SpecVersion != SpecVersion {
		return fieldErr(ErrMalformed, "specversion", "want %q, got %q", SpecVersion, env.SpecVersion)
	}
	if env.DataContentType != "" && env.DataContentType != DataContentType {
		return fieldErr(ErrMalformed, "datacontenttype", "want %q, got %q", DataContentType, env.DataContentType)
	}
	if len(env.Data) == 0 || bytes.Equal(env.Data, []byte("null")) {
		return fieldErr(ErrMissingField, "data", "the event has no data")
	}
	dec := json.NewDecoder(bytes.NewReader(env.Data))
	dec.DisallowUnknownFields()
	strictErr := dec.Decode(d)
	// A newer producer's event must say "newer version", not "unknown
	// field": on any failure, or a version other than ours, look at the
	// version alone before blaming a field.
	if strictErr != nil || d.SchemaVersion == nil || *d.SchemaVersion < 1 || *d.SchemaVersion > SchemaVersion {
		if err := checkVersion(env.Data); err != nil {
			return err
		}
		if strictErr != nil {
			return jsonErr(strictErr, "data")
		}
	}
	return nil
}

// build checks a parsed event and makes it an Event.
func build(env envelope, d data) (Event, error) {
	version := *d.SchemaVersion
	t, ok := strings.CutPrefix(env.Type, TypePrefix)
	if !ok || !Type(t).Known() {
		return Event{}, fieldErr(ErrUnknownType, "type", "%q", env.Type)
	}
	if env.Time == "" {
		return Event{}, fieldErr(ErrMissingField, "time", "")
	}
	at, err := time.Parse(time.RFC3339Nano, env.Time)
	if err != nil {
		return Event{}, fieldErr(ErrInvalidField, "time", "not an RFC 3339 timestamp: %q", env.Time)
	}
	if env.Subject != "" && env.Subject != d.ChangeID {
		return Event{}, fieldErr(ErrInvalidField, "subject", "must equal data.changeId (%q), got %q", d.ChangeID, env.Subject)
	}
	if env.Source == "" {
		return Event{}, fieldErr(ErrMissingField, "source", "")
	}
	if d.DurationMs < 0 || d.DurationMs > int64(time.Duration(1<<63-1)/time.Millisecond) {
		return Event{}, fieldErr(ErrInvalidField, "data.durationMs", "must be between 0 and 2^63 ns, got %d", d.DurationMs)
	}
	if d.Recovery == "" {
		d.Recovery = ManualIntervention
	}
	if len(d.Metadata) == 0 {
		d.Metadata = nil // {} and absent mean the same; keep one form
	}
	e := Event{
		ID: env.ID, Type: Type(t), SchemaVersion: version, Pipeline: d.Pipeline, ChangeID: d.ChangeID,
		Author: d.Author, ExecutionID: d.ExecutionID, Order: d.Order, TargetSystem: d.TargetSystem,
		Host: d.Host, RunnerID: d.RunnerID, LockToken: d.LockToken, OccurredAt: at.UTC(),
		Duration: time.Duration(d.DurationMs) * time.Millisecond, ErrorMessage: d.ErrorMessage,
		ErrorTrace: d.ErrorTrace, Metadata: d.Metadata, Recovery: d.Recovery,
		Transactional: d.Transactional, Resolution: d.Resolution, Operator: d.Operator, Reason: d.Reason,
		PrevHash: d.PrevHash, PrevSeq: d.PrevSeq, Position: d.Position,
	}
	if err := Validate(e); err != nil {
		return Event{}, err
	}
	return e, nil
}

// checkVersion reports a missing, malformed or unsupported schemaVersion.
func checkVersion(raw json.RawMessage) error {
	var peek struct {
		SchemaVersion json.RawMessage `json:"schemaVersion"`
	}
	if err := json.Unmarshal(raw, &peek); err != nil {
		return jsonErr(err, "data")
	}
	if len(peek.SchemaVersion) == 0 {
		return fieldErr(ErrMissingField, "data.schemaVersion", "")
	}
	var version int
	if err := json.Unmarshal(peek.SchemaVersion, &version); err != nil || version < 1 {
		return fieldErr(ErrUnsupportedVersion, "data.schemaVersion", "want an integer from 1 to %d, got %s", SchemaVersion, peek.SchemaVersion)
	}
	if version > SchemaVersion {
		return fieldErr(ErrUnsupportedVersion, "data.schemaVersion", "version %d is newer than %d, the newest this build reads; upgrade the consumer", version, SchemaVersion)
	}
	return nil
}

// Validate checks what Encode and Decode require of an event, including
// the size limits of its fields (MaxIDLen and the others) and that its
// text is valid UTF-8.
func Validate(e Event) error {
	switch {
	case e.ID == "":
		return fieldErr(ErrMissingField, "id", "")
	case !e.Type.Known():
		return fieldErr(ErrUnknownType, "type", "%q", e.Type)
	case e.SchemaVersion < 1 || e.SchemaVersion > SchemaVersion:
		return fieldErr(ErrUnsupportedVersion, "data.schemaVersion", "%d", e.SchemaVersion)
	case e.OccurredAt.IsZero():
		return fieldErr(ErrMissingField, "time", "")
	case e.OccurredAt.Year() < 1 || e.OccurredAt.UTC().Year() > 9999:
		return fieldErr(ErrInvalidField, "time", "year %d is outside RFC 3339", e.OccurredAt.Year())
	case e.Duration < 0:
		return fieldErr(ErrInvalidField, "data.durationMs", "negative duration %s", e.Duration)
	case !e.Recovery.Valid():
		return fieldErr(ErrInvalidField, "data.recovery", "want %s or %s, got %q", ManualIntervention, AlwaysRetry, e.Recovery)
	}
	for _, f := range []struct{ name, v string }{{"pipeline", e.Pipeline}, {"changeId", e.ChangeID}} {
		if f.v == "" {
			return fieldErr(ErrMissingField, "data."+f.name, "")
		}
	}
	if err := checkSizes(e); err != nil {
		return err
	}
	if e.PrevHash != "" {
		if e.SchemaVersion < 2 {
			return fieldErr(ErrInvalidField, "data.prevHash", "needs schemaVersion 2")
		}
		if h, ok := strings.CutPrefix(e.PrevHash, "sha256:"); !ok || len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "" {
			return fieldErr(ErrInvalidField, "data.prevHash", "want sha256: and 64 lower-case hex digits")
		}
	}
	if err := checkPlace(e); err != nil {
		return err
	}
	if v := e.Type.MinVersion(); e.SchemaVersion < v {
		return fieldErr(ErrInvalidField, "data.schemaVersion", "%s needs schemaVersion %d or newer, got %d", e.Type, v, e.SchemaVersion)
	}
	if e.Type == ManuallyResolved {
		switch {
		case e.Resolution == "":
			return fieldErr(ErrMissingField, "data.resolution", "")
		case !e.Resolution.Valid():
			return fieldErr(ErrInvalidField, "data.resolution", "want %s or %s, got %q", ResolvedApplied, ResolvedRolledBack, e.Resolution)
		case e.Operator == "":
			return fieldErr(ErrMissingField, "data.operator", "a manual resolution must say who made it")
		case e.Reason == "":
			return fieldErr(ErrMissingField, "data.reason", "a manual resolution must say why")
		}
		return nil
	}
	if e.Resolution != "" || e.Operator != "" || e.Reason != "" {
		return fieldErr(ErrInvalidField, "data.resolution", "resolution, operator and reason belong to %s only", ManuallyResolved)
	}
	if e.ExecutionID == "" {
		return fieldErr(ErrMissingField, "data.executionId", "")
	}
	if (e.Type == ExecutionFailed || e.Type == RollbackFailed || e.Type == ExecutionOverlapped) && e.ErrorMessage == "" {
		return fieldErr(ErrMissingField, "data.errorMessage", "a %s event must say what happened", e.Type)
	}
	return nil
}

// checkPlace checks PrevSeq and Position: absent before ChainVersion,
// and from it on consistent with each other and with PrevHash — the
// first message of a subject (position 1) follows nothing, any later one
// names the sequence and hash of the message before it, which is at least
// position-1 messages into the stream.
func checkPlace(e Event) error {
	if e.SchemaVersion < ChainVersion {
		if e.PrevSeq != 0 || e.Position != 0 {
			return fieldErr(ErrInvalidField, "data.prevSeq", "prevSeq and position need schemaVersion %d", ChainVersion)
		}
		return nil
	}
	switch {
	case e.Position == 0:
		return fieldErr(ErrMissingField, "data.position", "schemaVersion %d events say their position on their change's subject", ChainVersion)
	case e.Position == 1 && (e.PrevSeq != 0 || e.PrevHash != ""):
		return fieldErr(ErrInvalidField, "data.prevSeq", "the first event of a change (position 1) follows nothing: no prevSeq or prevHash")
	case e.Position > 1 && (e.PrevSeq == 0 || e.PrevHash == ""):
		return fieldErr(ErrMissingField, "data.prevSeq", "an event at position %d names the message before it: prevSeq and prevHash", e.Position)
	case e.Position > 1 && e.Position-1 > e.PrevSeq:
		return fieldErr(ErrInvalidField, "data.position", "position %d cannot follow stream sequence %d", e.Position, e.PrevSeq)
	case e.PrevSeq > math.MaxInt64:
		return fieldErr(ErrInvalidField, "data.prevSeq", "%d is beyond what a stream holds (2^63-1)", e.PrevSeq)
	}
	return nil
}

// jsonErr turns an encoding/json error into an *Error naming the field.
func jsonErr(err error, prefix string) error {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) && typeErr.Field != "" {
		field := typeErr.Field
		if prefix != "" {
			field = prefix + "." + field
		}
		return fieldErr(ErrInvalidField, field, "want a JSON %s, got %s", typeErr.Type, typeErr.Value)
	}
	if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fieldErr(ErrInvalidField, prefix+"."+strings.Trim(msg, `"`), "unknown field (a newer producer must raise schemaVersion)")
	}
	return &Error{Field: prefix, Reason: err.Error(), Err: ErrMalformed}
}

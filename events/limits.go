package events

import (
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Size limits, in UTF-8 bytes. Validate (so Encode and Decode) enforces
// them, so every event the stream accepts fits every store: DynamoDB's
// 400 KB item (which holds the whole event, with attribute names, a
// change's issue row again holds its error), NATS's 1 MB default maximum
// payload, MongoDB's 16 MB document, Couchbase's 20 MB value. An event
// with every field at its limit is about 180 KB of text: under half of a
// DynamoDB item, so the item's attribute names and index keys have room,
// and it encodes under MaxEventBytes unless its text needs heavy JSON
// escaping, which MaxEventBytes then bounds.
const (
	// MaxIDLen bounds the event id and the execution id: ids are keys
	// (Couchbase document keys are at most 250 bytes).
	MaxIDLen = 128
	// MaxKeyLen bounds the pipeline, the change id and the change's order:
	// they are index keys in every store and subject tokens on the stream.
	MaxKeyLen = 256
	// MaxTextLen bounds the short texts: author, targetSystem, host,
	// runnerId and operator.
	MaxTextLen = 1 << 10
	// MaxMessageLen bounds errorMessage and reason. The producer truncates
	// a longer error message (see Truncate); a reason is an operator's and
	// is refused.
	MaxMessageLen = 4 << 10
	// MaxTraceLen bounds errorTrace. The producer truncates a longer trace,
	// keeping its start and its end, so an outcome is always recorded.
	MaxTraceLen = 128 << 10
	// MaxMetadataKeys, MaxMetadataKeyLen, MaxMetadataValueLen and
	// MaxMetadataBytes (keys and values together) bound metadata.
	MaxMetadataKeys     = 64
	MaxMetadataKeyLen   = 128
	MaxMetadataValueLen = 4 << 10
	MaxMetadataBytes    = 32 << 10
	// MaxEventBytes bounds the encoded event as published: half of NATS's
	// default maximum payload (1 MB), which also carries the headers.
	// Fields within their limits exceed it only if JSON escapes much of
	// their text (a control character takes 6 bytes).
	MaxEventBytes = 512 << 10
)

// textLimit is a text field of an event with its limit.
type textLimit struct {
	field string
	v     string
	max   int
	name  string
}

// textLimits lists the text fields of an event with their limits, in the
// order Validate checks them. It returns an array, not a slice, so that
// checking a decoded event allocates nothing.
func textLimits(e Event) [13]textLimit {
	return [13]textLimit{
		{"id", e.ID, MaxIDLen, "MaxIDLen"},
		{"data.pipeline", e.Pipeline, MaxKeyLen, "MaxKeyLen"},
		{"data.changeId", e.ChangeID, MaxKeyLen, "MaxKeyLen"},
		{"data.executionId", e.ExecutionID, MaxIDLen, "MaxIDLen"},
		{"data.order", e.Order, MaxKeyLen, "MaxKeyLen"},
		{"data.author", e.Author, MaxTextLen, "MaxTextLen"},
		{"data.targetSystem", e.TargetSystem, MaxTextLen, "MaxTextLen"},
		{"data.host", e.Host, MaxTextLen, "MaxTextLen"},
		{"data.runnerId", e.RunnerID, MaxTextLen, "MaxTextLen"},
		{"data.operator", e.Operator, MaxTextLen, "MaxTextLen"},
		{"data.errorMessage", e.ErrorMessage, MaxMessageLen, "MaxMessageLen"},
		{"data.reason", e.Reason, MaxMessageLen, "MaxMessageLen"},
		{"data.errorTrace", e.ErrorTrace, MaxTraceLen, "MaxTraceLen"},
	}
}

// checkSizes checks every text field and the metadata against the limits,
// and that they are valid UTF-8: JSON would silently replace each invalid
// byte by U+FFFD (three bytes), so an event Encode accepted could decode
// over its limits, or differently.
func checkSizes(e Event) error {
	for _, f := range textLimits(e) {
		if len(f.v) > f.max {
			return tooLarge(f.field, len(f.v), f.max, f.name)
		}
		if !utf8.ValidString(f.v) {
			return fieldErr(ErrInvalidField, f.field, "not valid UTF-8")
		}
	}
	return checkMetadata(e.Metadata)
}

func checkMetadata(md map[string]string) error {
	if len(md) == 0 {
		return nil
	}
	if len(md) > MaxMetadataKeys {
		return fieldErr(ErrTooLarge, "data.metadata", "%d keys; the limit is %d (events.MaxMetadataKeys)", len(md), MaxMetadataKeys)
	}
	// The common case, every key and value within bounds, without sorting
	// or naming fields; a problem is then found and named in key order.
	total, bad := 0, false
	for k, v := range md {
		total += len(k) + len(v)
		bad = bad || k == "" || len(k) > MaxMetadataKeyLen || len(v) > MaxMetadataValueLen || !utf8.ValidString(k) || !utf8.ValidString(v)
	}
	if !bad && total <= MaxMetadataBytes {
		return nil
	}
	keys := make([]string, 0, len(md))
	for k := range md {
		keys = append(keys, k)
	}
	slices.Sort(keys) // the same key is named every time
	total = 0
	for _, k := range keys {
		v := md[k]
		field := "data.metadata[" + strconv.Quote(clip(k, 40)) + "]"
		switch {
		case k == "":
			return fieldErr(ErrInvalidField, "data.metadata", "empty key")
		case len(k) > MaxMetadataKeyLen:
			return fieldErr(ErrTooLarge, field, "the key is %d bytes; the limit is %d (events.MaxMetadataKeyLen)", len(k), MaxMetadataKeyLen)
		case len(v) > MaxMetadataValueLen:
			return fieldErr(ErrTooLarge, field, "the value is %d bytes; the limit is %d (events.MaxMetadataValueLen)", len(v), MaxMetadataValueLen)
		case !utf8.ValidString(k) || !utf8.ValidString(v):
			return fieldErr(ErrInvalidField, field, "not valid UTF-8")
		}
		total += len(k) + len(v)
	}
	if total > MaxMetadataBytes {
		return fieldErr(ErrTooLarge, "data.metadata", "keys and values total %d bytes; the limit is %d (events.MaxMetadataBytes)", total, MaxMetadataBytes)
	}
	return nil
}

func tooLarge(field string, n, max int, name string) *Error {
	return fieldErr(ErrTooLarge, field, "%d bytes; the limit is %d (events.%s)", n, max, name)
}

// clip shortens s for an error message, on a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return cutRunes(s, n) + "…"
}

// cutRunes returns the longest prefix of s of at most n bytes that does
// not end inside a UTF-8 sequence.
func cutRunes(s string, n int) string {
	if n >= len(s) {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// tailRunes returns the longest suffix of s of at most n bytes that does
// not start inside a UTF-8 sequence.
func tailRunes(s string, n int) string {
	if n >= len(s) {
		return s
	}
	i := len(s) - n
	for i < len(s) && !utf8.RuneStart(s[i]) {
		i++
	}
	return s[i:]
}

// Truncate returns s if it is at most max bytes long; otherwise its start
// and its end, cut on rune boundaries, around a marker saying how much was
// left out — "… [truncated N bytes] …" — in at most max bytes in all. The
// start of a trace says where a failure began, its end how it ended, so
// both are kept. The producer truncates error traces and messages this way
// (to MaxTraceLen and MaxMessageLen) rather than fail to record an
// outcome.
func Truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	if max <= 0 {
		return ""
	}
	// The marker's length with the most digits N can have.
	room := max - len(truncMarker(len(s)))
	if room < 2 {
		return cutRunes(s, max)
	}
	head := cutRunes(s, room-room/2)
	tail := tailRunes(s, room/2)
	return head + truncMarker(len(s)-len(head)-len(tail)) + tail
}

func truncMarker(n int) string { return fmt.Sprintf("… [truncated %d bytes] …", n) }

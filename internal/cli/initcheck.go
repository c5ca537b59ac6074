package cli

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/projector"
)

// difference is one setting of a stream, bucket or consumer that is not
// what auditflow gives it: init reports each, and changes none.
type difference struct {
	Field    string `json:"field"`
	Expected string `json:"expected"`
	Actual   string `json:"actual"`
}

func (d difference) String() string {
	return fmt.Sprintf("%s: expected %s, actual %s", d.Field, d.Expected, d.Actual)
}

// joinDifferences is init's detail for a list of differences.
func joinDifferences(ds []difference) string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.String()
	}
	return strings.Join(out, "; ")
}

// streamDifferences compares an existing stream's configuration, have,
// with want, the one auditflow creates it with, on what decides whether
// the stream keeps every message it should and nothing else: limits
// (which drop messages), retention, discard, subjects, storage, replicas,
// what may remove messages (deletes, purges, rollups, per-message TTLs),
// sealing, sources and mirrors, transforms and republishing, and the
// duplicate window when want sets one. What the server normalises is
// compared as it means: 0 and -1 are both "unlimited". Descriptions,
// metadata, placement, compression and the first sequence do not count.
func streamDifferences(have, want jetstream.StreamConfig) []difference {
	var ds []difference
	add := func(field string, expected, actual any) {
		ds = append(ds, difference{Field: field, Expected: fmt.Sprint(expected), Actual: fmt.Sprint(actual)})
	}
	if h, w := sortedSubjects(have.Subjects), sortedSubjects(want.Subjects); !slices.Equal(h, w) {
		add("subjects", subjectList(w), subjectList(h))
	}
	if have.Retention != want.Retention {
		add("retention", want.Retention, have.Retention)
	}
	if have.Storage != want.Storage {
		add("storage", want.Storage, have.Storage)
	}
	if max(have.Replicas, 1) != max(want.Replicas, 1) {
		add("replicas", max(want.Replicas, 1), max(have.Replicas, 1))
	}
	for _, l := range []struct {
		field      string
		have, want int64
	}{
		{"max msgs", have.MaxMsgs, want.MaxMsgs},
		{"max bytes", have.MaxBytes, want.MaxBytes},
		{"max msgs per subject", have.MaxMsgsPerSubject, want.MaxMsgsPerSubject},
		{"max msg size", int64(have.MaxMsgSize), int64(want.MaxMsgSize)},
		{"max consumers", int64(have.MaxConsumers), int64(want.MaxConsumers)},
	} {
		if limit(l.have) != limit(l.want) {
			add(l.field, limit(l.want), limit(l.have))
		}
	}
	if have.MaxAge != want.MaxAge {
		add("max age", age(want.MaxAge), age(have.MaxAge))
	}
	if have.Discard != want.Discard {
		add("discard", want.Discard, have.Discard)
	}
	if want.Duplicates > 0 && have.Duplicates != want.Duplicates {
		add("duplicate window", want.Duplicates, have.Duplicates)
	}
	for _, b := range []struct {
		field      string
		have, want bool
	}{
		{"deny delete", have.DenyDelete, want.DenyDelete},
		{"deny purge", have.DenyPurge, want.DenyPurge},
		{"allow rollup", have.AllowRollup, want.AllowRollup},
		{"sealed", have.Sealed, want.Sealed},
		{"no ack", have.NoAck, want.NoAck},
		{"allow msg ttl", have.AllowMsgTTL, want.AllowMsgTTL},
		{"discard new per subject", have.DiscardNewPerSubject, want.DiscardNewPerSubject},
	} {
		if b.have != b.want {
			add(b.field, b.want, b.have)
		}
	}
	if want.AllowDirect && !have.AllowDirect { // readers use direct gets
		add("allow direct", true, false)
	}
	if h, w := sourceName(have.Mirror), sourceName(want.Mirror); h != w {
		add("mirror", w, h)
	} else if have.Mirror != nil && have.Mirror.Consumer == nil && want.Mirror.Consumer != nil {
		// The server refuses to change a mirror's source: a new one is needed.
		add("mirror consumer", "durable "+want.Mirror.Consumer.Name+" on "+want.Mirror.Name+" (copies on within a second of a leader change)",
			"ephemeral (copies nothing for 10 s to minutes after the stream's leader is lost): make a new mirror under another name and delete this one (break-glass)")
	}
	if h, w := sourceNames(have.Sources), sourceNames(want.Sources); h != w {
		add("sources", w, h)
	}
	if (have.SubjectTransform == nil) != (want.SubjectTransform == nil) {
		add("subject transform", transform(want.SubjectTransform), transform(have.SubjectTransform))
	}
	if (have.RePublish == nil) != (want.RePublish == nil) {
		add("republish", republish(want.RePublish), republish(have.RePublish))
	}
	if have.PersistMode != want.PersistMode {
		add("persist mode", want.PersistMode, have.PersistMode)
	}
	return ds
}

// consumerDifferences compares a projector's durable consumer on the audit
// stream, for subjects prefix.>, with what a projector needs
// (projector.Drift, which the projector checks as it runs).
func consumerDifferences(have jetstream.ConsumerConfig, prefix string) []difference {
	var ds []difference
	for _, d := range projector.Drift(have, prefix) {
		ds = append(ds, difference{Field: strings.ReplaceAll(d.Field, "_", " "), Expected: d.Expected, Actual: d.Actual})
	}
	return ds
}

// limit is a stream limit as the server means it: 0 and below are none.
func limit(v int64) string {
	if v <= 0 {
		return "unlimited"
	}
	return fmt.Sprint(v)
}

func age(d time.Duration) string {
	if d <= 0 {
		return "unlimited"
	}
	return d.String()
}

func sortedSubjects(s []string) []string {
	return slices.Sorted(slices.Values(s))
}

func subjectList(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, " ")
}

func sourceName(s *jetstream.StreamSource) string {
	if s == nil {
		return "none"
	}
	return s.Name
}

func sourceNames(ss []*jetstream.StreamSource) string {
	var names []string
	for _, s := range ss {
		names = append(names, sourceName(s))
	}
	return subjectList(names)
}

func transform(t *jetstream.SubjectTransformConfig) string {
	if t == nil {
		return "none"
	}
	return t.Source + " → " + t.Destination
}

func republish(r *jetstream.RePublish) string {
	if r == nil {
		return "none"
	}
	return r.Source + " → " + r.Destination
}

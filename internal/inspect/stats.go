package inspect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
)

// Health is how a store's projection is doing, as far as NATS can tell:
// each part is nil when it could not be read, and Notes say why.
type Health struct {
	Lag         *Lag              `json:"lag"`
	Writes      *Writes           `json:"writes"`
	DeadLetters *DeadLetterCounts `json:"deadLetters"`
	// Held counts the events parked for a newer projector of this
	// consumer (projector.HeldStream); nil if unread.
	Held *uint64 `json:"held"`
	// Mirrors are the stream's mirrors (auditflow init --mirror), each
	// with how far behind it is; nil if unread.
	Mirrors []MirrorLag `json:"mirrors"`
	Notes   []string    `json:"notes"`
}

// Projection names a store's projection: its stream, its projector's
// durable consumer and its store kind (the AuditWrite subject's last token).
type Projection struct {
	Stream, Consumer, Kind string
}

// ReadHealth reads lag, write latency since then and dead letters; what
// it cannot read it notes instead of failing, so a report still shows the
// rest.
func ReadHealth(ctx context.Context, js jetstream.JetStream, st stores.Store, p Projection, since time.Time, log *slog.Logger) Health {
	h := Health{Notes: []string{}}
	var err error
	if h.Lag, err = LagOf(ctx, js, st, p.Stream, p.Consumer); err != nil {
		h.Notes = append(h.Notes, "no lag: "+err.Error())
	}
	if h.Mirrors, err = MirrorsOf(ctx, js, p.Stream); err != nil {
		h.Notes = append(h.Notes, "no mirror lag: "+err.Error())
	}
	if h.Writes, err = WritesOf(ctx, js, p.Kind, since, log); err != nil {
		h.Notes = append(h.Notes, "no write latency: "+err.Error())
	}
	if h.DeadLetters, err = CountDeadLetters(ctx, js, since); err != nil {
		h.Notes = append(h.Notes, "no dead-letter count: "+err.Error())
	}
	if n, err := HeldOf(ctx, js, p.Consumer); err != nil {
		h.Notes = append(h.Notes, "no parked-event count: "+err.Error())
	} else {
		h.Held = &n
		if n > 0 {
			h.Notes = append(h.Notes, fmt.Sprintf("%d events of a newer schema version (and the later events of their changes) are parked in %s for a newer projector: upgrade the projector; it stores them when it starts", n, projector.HeldStream))
		}
	}
	if l := h.Lag; l != nil && len(l.Drift) > 0 {
		h.Notes = append(h.Notes, fmt.Sprintf("consumer %s was changed outside the projector (%s): its checkpoint does not move until a projector restart restores it", l.Consumer, strings.Join(l.Drift, "; ")))
	}
	if w := h.Writes; w != nil && w.SignaturesUnchecked {
		h.Notes = append(h.Notes, "the projector of this store runs without a trust list (--insecure-no-trust): signatures are not checked, every event is stored as believed")
	}
	return h
}

// HeldOf counts the events parked in projector.HeldStream for consumer.
func HeldOf(ctx context.Context, js jetstream.JetStream, consumer string) (uint64, error) {
	parked, err := projector.Parked(ctx, js, projector.DefaultHeldPrefix, consumer)
	var n uint64
	for _, c := range parked {
		n += c
	}
	return n, err
}

// Lag is how far a store's projector is behind the stream.
type Lag struct {
	Consumer        string `json:"consumer"`
	Pending         uint64 `json:"pending"`    // on the stream, not yet delivered
	AckPending      uint64 `json:"ackPending"` // delivered, not yet stored
	StreamLastSeq   uint64 `json:"streamLastSeq"`
	StoreCheckpoint uint64 `json:"storeCheckpoint"`
	// Drift is how the consumer's configuration differs from what its
	// projector needs (projector.Drift), empty if it does not.
	Drift []string `json:"drift,omitempty"`
}

// LagOf reads the lag of consumer (a projector's durable on stream) and
// the checkpoint it recorded in st.
func LagOf(ctx context.Context, js jetstream.JetStream, st stores.Store, stream, consumer string) (*Lag, error) {
	cons, err := js.Consumer(ctx, stream, consumer)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, fmt.Errorf("stream %s does not exist: nothing can be projected (restore it from its mirror: auditflow restore): %w", stream, err)
	case errors.Is(err, jetstream.ErrConsumerNotFound):
		return nil, fmt.Errorf("durable consumer %s does not exist on %s: deleted, or no projector for this store has started yet (a running projector recreates a deleted one from its store's checkpoint within a second; is one running? --consumer names another): %w",
			consumer, stream, err)
	case err != nil:
		return nil, fmt.Errorf("consumer %s: %w", consumer, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, err
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, err
	}
	cp, err := st.Checkpoint(ctx, consumer)
	if err != nil {
		return nil, err
	}
	var drift []string
	for _, d := range projector.Drift(info.Config, events.DefaultSubjectPrefix) {
		drift = append(drift, d.String())
	}
	return &Lag{Consumer: consumer, Pending: info.NumPending, AckPending: uint64(info.NumAckPending),
		StreamLastSeq: s.CachedInfo().State.LastSeq, StoreCheckpoint: cp, Drift: drift}, nil
}

// Writes summarises a store kind's AuditWrite events over a window.
type Writes struct {
	Writes int           `json:"writes"`
	Events int           `json:"events"`
	Errors int           `json:"errors"`
	P50    time.Duration `json:"-"`
	P95    time.Duration `json:"-"`
	Max    time.Duration `json:"-"`
	P50Ms  float64       `json:"p50Ms"`
	P95Ms  float64       `json:"p95Ms"`
	MaxMs  float64       `json:"maxMs"`
	// SignaturesUnchecked: the newest write's projector runs without a
	// trust list (projector.AuditWrite).
	SignaturesUnchecked bool `json:"signaturesUnchecked,omitempty"`
}

// Ms is d in milliseconds, to the microsecond.
func Ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// WritesOf summarises the AuditWrite events of store kind kind since then
// (the zero time: all that AUDIT_WRITES keeps).
func WritesOf(ctx context.Context, js jetstream.JetStream, kind string, since time.Time, log *slog.Logger) (*Writes, error) {
	s, err := js.Stream(ctx, projector.WritesStream)
	if err != nil {
		return nil, err
	}
	subject := projector.DefaultWritesPrefix + "." + kind
	out := &Writes{}
	last, err := s.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return out, nil // this store kind has written nothing
	}
	if err != nil {
		return nil, err
	}
	var durs []time.Duration
	sc := projector.ScanConfig{Stream: projector.WritesStream, Subjects: []string{subject}, Since: since, ToSeq: last.Sequence, Logger: log}
	if since.IsZero() {
		sc.FromSeq = 1
	}
	err = projector.Scan(ctx, js, sc, func(msgs []projector.StreamMsg) error {
		for _, m := range msgs {
			var w projector.AuditWrite
			if json.Unmarshal(m.Data, &w) != nil {
				continue
			}
			out.SignaturesUnchecked = w.SignaturesUnchecked // the newest wins
			out.Writes++
			if w.Error != "" {
				out.Errors++
				continue
			}
			out.Events += w.Count
			durs = append(durs, w.Duration)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(durs) > 0 {
		slices.Sort(durs)
		out.P50, out.P95, out.Max = durs[len(durs)/2], durs[len(durs)*95/100], durs[len(durs)-1]
		out.P50Ms, out.P95Ms, out.MaxMs = Ms(out.P50), Ms(out.P95), Ms(out.Max)
	}
	return out, nil
}

// DeadLetterCounts counts the messages on AUDIT_DEADLETTER.
type DeadLetterCounts struct {
	Total uint64 `json:"total"` // on the stream, all time
	Since int    `json:"since"` // within the window
}

// CountDeadLetters counts the dead letters in all and since then.
func CountDeadLetters(ctx context.Context, js jetstream.JetStream, since time.Time) (*DeadLetterCounts, error) {
	s, err := js.Stream(ctx, projector.DeadLetterStream)
	if err != nil {
		return nil, err
	}
	state := s.CachedInfo().State
	out := &DeadLetterCounts{Total: state.Msgs}
	if state.Msgs == 0 {
		return out, nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since})
	if err != nil {
		return nil, err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, err
	}
	out.Since = int(info.NumPending)
	return out, nil
}

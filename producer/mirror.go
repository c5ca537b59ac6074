package producer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrRestore is an audit stream restore that was refused or could not
// finish; the message says why and what to do.
var ErrRestore = errors.New("producer: restore")

// Mirror describes a continuous backup of the audit stream: a JetStream
// mirror, which copies every message with its sequence, subject, headers
// and bytes as soon as it is stored. A mirror on another server, cluster
// or JetStream domain outlives the loss of the audit stream's own.
type Mirror struct {
	Name     string // e.g. "AUDIT_MIRROR"; required
	Domain   string // the audit stream's JetStream domain, when the mirror is in another one
	Replicas int    // default: the audit stream's
}

// MirrorConfig is the JetStream configuration of m for the audit stream c:
// file storage, no limits, delete and purge denied, like the stream.
func MirrorConfig(c StreamConfig, m Mirror) (jetstream.StreamConfig, error) {
	if err := c.Validate(); err != nil {
		return jetstream.StreamConfig{}, err
	}
	if m.Replicas == 0 {
		m.Replicas = c.Replicas
	}
	mc := StreamConfig{Name: m.Name, Replicas: m.Replicas, SubjectPrefix: c.SubjectPrefix}
	switch err := mc.Validate(); {
	case m.Name == "":
		return jetstream.StreamConfig{}, fmt.Errorf("%w: a mirror needs a name", ErrInvalidConfig)
	case err != nil:
		return jetstream.StreamConfig{}, err
	case m.Name == c.Name:
		return jetstream.StreamConfig{}, fmt.Errorf("%w: the mirror may not be named like the stream it mirrors (%s)", ErrInvalidConfig, c.Name)
	}
	js := c.jsConfig()
	js.Name = m.Name
	js.Description = "auditflow: a continuous mirror of " + c.Name + ", its backup of record (auditflow restore --from " + m.Name + ")"
	js.Subjects = nil
	js.Replicas = m.Replicas
	js.Duplicates = 0
	js.Mirror = &jetstream.StreamSource{Name: c.Name, Domain: m.Domain}
	if m.Domain == "" {
		// Durable sourcing: the mirror reads through a replicated consumer
		// on the audit stream (MirrorConsumerConfig), which survives the
		// stream's leader change and goes on delivering from the new
		// leader within a second. Without it the server copies through an
		// ephemeral consumer on the stream's leader, which dies with it:
		// the mirror notices only after 10 s without news and then retries
		// with a back-off of up to 2 minutes (nats-server's
		// sourceHealthCheckInterval, retryBackOff, retryMaximum), copying
		// nothing meanwhile. (A mirror in another domain keeps the
		// ephemeral consumer: its deliveries would need an import.)
		js.Mirror.Consumer = &jetstream.StreamConsumerSource{Name: m.Name, DeliverSubject: MirrorDeliverSubject(m.Name)}
	}
	// The server makes a mirror answer the stream's direct gets once it is
	// nearly caught up (MirrorDirect follows the stream's AllowDirect); a
	// read it answers may be a few messages behind, like a follower's on a
	// cluster. Writers are safe either way (every publish expects the
	// change's last sequence), and Producer.Last asks again when a mirror
	// answered.
	js.AllowDirect = false
	return js, nil
}

// MirrorDeliverSubject is where the audit stream's consumer for the
// mirror named name delivers: no role may publish there (a message
// published there with a forged reply would enter the mirror).
func MirrorDeliverSubject(name string) string { return "auditflow.mirror." + name }

// MirrorConsumerConfig is the durable consumer on the audit stream c that
// the mirror m copies through (durable sourcing, nats-server 2.14 or
// later): named like the mirror, replicated like the stream, pushing to
// MirrorDeliverSubject with flow control, and acknowledged by the mirror's
// flow-control replies (the server requires exactly this shape).
func MirrorConsumerConfig(c StreamConfig, m Mirror) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        m.Name,
		Description:    "auditflow: the mirror " + m.Name + " copies " + c.Name + " through this consumer; deleting it stops the mirror",
		DeliverSubject: MirrorDeliverSubject(m.Name),
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckPolicy:      jetstream.AckFlowControlPolicy,
		FlowControl:    true,
		IdleHeartbeat:  time.Second, // the only value the server accepts with AckFlowControl
		MaxAckPending:  10_000,
	}
}

// EnsureMirror creates m as a mirror of the audit stream c, or checks that
// an existing stream of that name is one. It never changes a stream. For
// a mirror in the stream's domain it first creates the consumer the
// mirror copies through (MirrorConsumerConfig), again if it went missing.
func EnsureMirror(ctx context.Context, js jetstream.JetStream, c StreamConfig, m Mirror) (jetstream.Stream, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	want, err := MirrorConfig(c, m)
	if err != nil {
		return nil, err
	}
	existing, err := js.Stream(ctx, want.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return nil, fmt.Errorf("producer: stream %s: %w", want.Name, err)
	default:
		if have := existing.CachedInfo().Config.Mirror; have == nil || have.Consumer == nil {
			want.Mirror.Consumer = nil // an existing mirror without one: nothing would read it
		}
	}
	if want.Mirror.Consumer != nil {
		if _, err := js.CreatePushConsumer(ctx, c.Name, MirrorConsumerConfig(c, m)); err != nil {
			return nil, fmt.Errorf("producer: the consumer on %s that the mirror %s copies through: %w", c.Name, m.Name, err)
		}
	}
	s, created, err := openOrCreate(ctx, js, want)
	if err != nil || created {
		return s, err
	}
	have := s.CachedInfo().Config
	if have.Mirror == nil || have.Mirror.Name != c.Name {
		return nil, fmt.Errorf("%w: stream %s exists and is not a mirror of %s (a stream promoted by a restore stays a frozen copy): "+
			"name the new mirror otherwise", ErrStreamMismatch, want.Name, c.Name)
	}
	if have.Storage != jetstream.FileStorage || have.MaxAge != 0 || have.MaxBytes > 0 || have.MaxMsgs > 0 || !have.DenyDelete || !have.DenyPurge {
		return nil, fmt.Errorf("%w: mirror %s may drop or lose history (storage %s, max age %s, max bytes %d, max msgs %d, deny delete/purge %v/%v); "+
			"change it by hand", ErrStreamMismatch, want.Name, have.Storage, have.MaxAge, have.MaxBytes, have.MaxMsgs, have.DenyDelete, have.DenyPurge)
	}
	return s, nil
}

// Restored is what Restore did.
type Restored struct {
	From               string
	Messages           uint64
	FirstSeq, LastSeq  uint64
	Took               time.Duration
	Resumed            bool // an interrupted restore was finished
	MirrorWasPromoted  bool // the mirror stopped mirroring (now or by an earlier attempt)
	LastMessageMatches bool // the stream's first and last messages equal the mirror's, byte for byte
}

// restoringDescription marks an audit stream a restore is filling.
const restoringDescription = "auditflow: being restored by auditflow restore from "

// Restore recreates the deleted audit stream c from its mirror, with every
// message at its original sequence, subject and bytes (signatures hold):
//
//  1. it refuses if the audit stream exists (unless it is an interrupted
//     restore from the same mirror, which it finishes), if from is not a
//     mirror of c's stream, or if the mirror has gaps;
//  2. it promotes the mirror to a plain stream (JetStream forbids a stream
//     sourcing from its own mirror), which from then on is a frozen copy;
//  3. it creates the audit stream with no subjects, sourcing the copy, so
//     that no runner can publish, and none opens it (OpenStream finds the
//     configuration different), before the history is whole;
//  4. it waits until every message is there and compares the first and
//     last messages with the copy's;
//  5. it sets the stream's own configuration: subjects on, source off.
//
// progress, if not nil, is called as messages arrive. Restore needs the
// right to update the audit stream, which the deployment's roles are
// denied (a break-glass act, like the deletion it repairs).
func Restore(ctx context.Context, js jetstream.JetStream, c StreamConfig, from string, progress func(have, want uint64)) (Restored, error) {
	start := time.Now()
	if err := c.Validate(); err != nil {
		return Restored{}, err
	}
	r := Restored{From: from}
	want := c.jsConfig()

	audit, err := js.Stream(ctx, c.Name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return r, fmt.Errorf("producer: stream %s: %w", c.Name, err)
	default:
		cfg := audit.CachedInfo().Config
		if cfg.Description != restoringDescription+from || len(cfg.Sources) != 1 || cfg.Sources[0].Name != from {
			return r, fmt.Errorf("%w: the audit stream %s exists: restore only recreates a deleted one, it never replaces history", ErrRestore, c.Name)
		}
		r.Resumed = true
	}

	mirror, err := js.Stream(ctx, from)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return r, fmt.Errorf("%w: no stream %s to restore from", ErrRestore, from)
	}
	if err != nil {
		return r, fmt.Errorf("producer: stream %s: %w", from, err)
	}
	mi, err := mirror.Info(ctx)
	if err != nil {
		return r, fmt.Errorf("producer: stream %s: %w", from, err)
	}
	cfg, st := mi.Config, mi.State
	switch {
	case cfg.Mirror != nil && cfg.Mirror.Name != c.Name:
		return r, fmt.Errorf("%w: %s mirrors %s, not %s", ErrRestore, from, cfg.Mirror.Name, c.Name)
	case cfg.Mirror == nil && !strings.HasPrefix(cfg.Description, "auditflow: a continuous mirror of "+c.Name) &&
		!strings.HasPrefix(cfg.Description, "auditflow: a frozen copy of "+c.Name):
		return r, fmt.Errorf("%w: %s is not a mirror of %s", ErrRestore, from, c.Name)
	case st.Msgs == 0:
		return r, fmt.Errorf("%w: %s is empty: there is no history to restore", ErrRestore, from)
	case st.NumDeleted > 0 || st.Msgs != st.LastSeq-st.FirstSeq+1:
		return r, fmt.Errorf("%w: %s has gaps (%d messages in sequences %d..%d): the history cannot keep its sequences; "+
			"restore it with nats stream restore from a backup instead", ErrRestore, from, st.Msgs, st.FirstSeq, st.LastSeq)
	}
	r.FirstSeq, r.LastSeq, r.Messages = st.FirstSeq, st.LastSeq, st.Msgs
	r.MirrorWasPromoted = cfg.Mirror == nil

	if cfg.Mirror != nil {
		cfg.Mirror = nil
		cfg.MirrorDirect = false // a frozen copy must stop answering the stream's reads
		cfg.Description = "auditflow: a frozen copy of " + c.Name + " up to sequence " + fmt.Sprint(st.LastSeq) + ", promoted from its mirror by auditflow restore"
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			return r, fmt.Errorf("%w: promote the mirror %s: %w", ErrRestore, from, err)
		}
		r.MirrorWasPromoted = true
	}

	if !r.Resumed {
		filling := want
		filling.Subjects = nil
		filling.Description = restoringDescription + from
		filling.Sources = []*jetstream.StreamSource{{Name: from}}
		if st.FirstSeq > 1 {
			filling.FirstSeq = st.FirstSeq
		}
		if audit, err = js.CreateStream(ctx, filling); err != nil {
			return r, fmt.Errorf("%w: create %s sourcing %s: %w", ErrRestore, c.Name, from, err)
		}
	}

	for tick := time.NewTicker(50 * time.Millisecond); ; {
		ai, err := audit.Info(ctx)
		if err != nil {
			tick.Stop()
			return r, fmt.Errorf("%w: %s: %w", ErrRestore, c.Name, err)
		}
		if progress != nil {
			progress(ai.State.Msgs, st.Msgs)
		}
		if ai.State.Msgs > st.Msgs || ai.State.LastSeq > st.LastSeq {
			tick.Stop()
			return r, fmt.Errorf("%w: %s holds more than %s (%d messages up to %d): stopped before opening it", ErrRestore, c.Name, from, ai.State.Msgs, ai.State.LastSeq)
		}
		if ai.State.Msgs == st.Msgs && ai.State.LastSeq == st.LastSeq && ai.State.FirstSeq == st.FirstSeq {
			tick.Stop()
			break
		}
		select {
		case <-ctx.Done():
			tick.Stop()
			return r, fmt.Errorf("%w: %d of %d messages copied when %w; run restore again to finish", ErrRestore, ai.State.Msgs, st.Msgs, ctx.Err())
		case <-tick.C:
		}
	}
	for _, seq := range []uint64{st.FirstSeq, st.LastSeq} {
		a, err := audit.GetMsg(ctx, seq)
		if err != nil {
			return r, fmt.Errorf("%w: read %s %d: %w", ErrRestore, c.Name, seq, err)
		}
		m, err := mirror.GetMsg(ctx, seq)
		if err != nil {
			return r, fmt.Errorf("%w: read %s %d: %w", ErrRestore, from, seq, err)
		}
		if a.Subject != m.Subject || !bytes.Equal(a.Data, m.Data) {
			return r, fmt.Errorf("%w: %s's message %d differs from %s's: stopped before opening it", ErrRestore, c.Name, seq, from)
		}
	}
	r.LastMessageMatches = true

	open := want
	open.FirstSeq = audit.CachedInfo().Config.FirstSeq
	if _, err := js.UpdateStream(ctx, open); err != nil {
		return r, fmt.Errorf("%w: open %s (subjects on, source off): %w; run restore again to finish", ErrRestore, c.Name, err)
	}
	r.Took = time.Since(start)
	return r, nil
}

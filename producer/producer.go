package producer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natsperm"
	"github.com/auditflow/auditflow/trust"
)

// Config configures a Producer.
type Config struct {
	Stream StreamConfig
	// CreateStream lets New create the audit stream if it is missing
	// (EnsureStream). Default false: New opens the existing stream
	// (OpenStream) and fails with ErrNoStream if there is none, so that a
	// deleted stream never comes back empty. Set it only where creating the
	// stream is the point: `auditflow init`, the embedded mode, tests.
	CreateStream bool
	// RetryFor bounds how long transient failures (timeouts, no responders
	// during a leader election, a reconnecting client) are retried.
	// Default 30s.
	RetryFor time.Duration
	// AttemptTimeout bounds one publish attempt. Default 5s.
	AttemptTimeout time.Duration
	// Signer, if set, signs every event published (see package trust):
	// the signature goes in the Auditflow-Signature header. Nil publishes
	// unsigned events, which a projector with a trust list flags.
	Signer *trust.Signer
	Logger *slog.Logger // nil discards
}

// Producer publishes execution events to the audit stream.
type Producer struct {
	js     jetstream.JetStream
	stream jetstream.Stream
	cfg    Config
	log    *slog.Logger
}

// New opens the audit stream (OpenStream: it must exist, with the
// configured settings; or EnsureStream, creating it, with
// Config.CreateStream) and returns a Producer for it. Transient failures
// are retried for up to Config.RetryFor, as publishes are: a process that
// starts while a cluster elects a leader waits for it.
func New(ctx context.Context, js jetstream.JetStream, cfg Config) (*Producer, error) {
	if cfg.RetryFor == 0 {
		cfg.RetryFor = 30 * time.Second
	}
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = 5 * time.Second
	}
	if cfg.RetryFor < 0 || cfg.AttemptTimeout < 0 {
		return nil, fmt.Errorf("%w: negative retry duration", ErrInvalidConfig)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	open := OpenStream
	if cfg.CreateStream {
		open = EnsureStream
	}
	s, err := open(ctx, js, cfg.Stream, WithRetry(Retry{For: cfg.RetryFor, AttemptTimeout: cfg.AttemptTimeout, Logger: log}))
	if err != nil {
		return nil, err
	}
	_ = cfg.Stream.Validate() // already validated by OpenStream/EnsureStream; fills defaults in our copy
	return &Producer{js: js, stream: s, cfg: cfg, log: log}, nil
}

// PublishOpt modifies one Publish.
type PublishOpt func(*publishOpts)

type publishOpts struct {
	expect    bool
	expectSeq uint64
	after     *Head
}

// Head is where a change stands on the stream: its newest message's
// sequence and hash (events.Hash of its bytes), its position (how many
// messages the change's subject holds up to it), and its
// Auditflow-Signature header ("" if unsigned), for the reader to judge
// with a trust list. The zero Head means "no events".
type Head struct {
	Seq       uint64
	Hash      string
	Position  uint64
	Signature string
}

// ExpectLastSeq makes the publish succeed only if the change's newest event
// is at stream sequence seq (0: the change has no events yet). Two writers
// racing on one change cannot both succeed: the loser gets ErrConflict.
func ExpectLastSeq(seq uint64) PublishOpt {
	return func(o *publishOpts) { o.expect, o.expectSeq = true, seq }
}

// After publishes the event as the successor of h: it expects h.Seq (as
// ExpectLastSeq) and places the event right after h in the change's chain
// (PrevSeq = h.Seq, PrevHash = h.Hash, Position = h.Position+1; the zero
// Head places it first). Pass the Head that Last or the previous Publish
// returned.
func After(h Head) PublishOpt {
	return func(o *publishOpts) { o.expect, o.expectSeq, o.after = true, h.Seq, &h }
}

// Subject returns the subject of a change's events on this producer's stream.
func (p *Producer) Subject(pipeline, changeID string) string {
	return events.Subject(p.cfg.Stream.SubjectPrefix, pipeline, changeID)
}

// Publish validates, encodes and publishes e, waiting for the stream's
// acknowledgement, and returns its Head: its stream sequence, hash and
// position.
//
// The event is placed in its change's chain (see After): after the Head
// given with After, first with ExpectLastSeq(0), and otherwise after the
// change's newest message as read just before publishing (with
// ExpectLastSeq(n), that message must be at n), expecting that message's
// sequence; a publish without After that loses a race with another writer
// reads the change again and tries anew, a few times. An event of a
// version before events.ChainVersion gets the hash link only.
//
// An error message or trace over its limit (events.MaxMessageLen,
// events.MaxTraceLen, or what keeps the encoded event under
// events.MaxEventBytes) is truncated, keeping its start and end around a
// "… [truncated N bytes] …" marker, so a long output never stops an outcome
// from being recorded. Any other field over its limit (oversize metadata, a
// long reason) is refused with an error naming the field and the limit
// (events.ErrTooLarge).
//
// The message id is the event id, so a retry of a publish whose ack was lost
// is deduplicated by the stream rather than stored twice. Transient failures
// are retried with exponential back-off for up to Config.RetryFor.
func (p *Producer) Publish(ctx context.Context, e events.Event, opts ...PublishOpt) (Head, error) {
	var o publishOpts
	for _, opt := range opts {
		opt(&o)
	}
	switch {
	case o.after != nil:
		return p.publishAfter(ctx, e, *o.after)
	case o.expect && o.expectSeq == 0:
		return p.publishAfter(ctx, e, Head{})
	}
	for attempt := 0; ; attempt++ {
		_, head, err := p.Last(ctx, e.Pipeline, e.ChangeID)
		if err != nil && head.Seq == 0 && !errors.Is(err, ErrNoEvents) {
			return Head{}, fmt.Errorf("producer: publish %s %s: read the change's newest message to place it after: %w", e.Type, e.ID, err)
		}
		if o.expect && head.Seq != o.expectSeq {
			return Head{}, fmt.Errorf("producer: publish %s %s: %w: expected last sequence %d, the change is at %d",
				e.Type, e.ID, ErrConflict, o.expectSeq, head.Seq)
		}
		h, err := p.publishAfter(ctx, e, head)
		if o.expect || !errors.Is(err, ErrConflict) || attempt == 4 {
			return h, err
		}
	}
}

// publishAfter publishes e placed right after head, expecting head.Seq.
func (p *Producer) publishAfter(ctx context.Context, e events.Event, head Head) (Head, error) {
	if e.SchemaVersion >= events.ChainVersion {
		e.PrevSeq, e.PrevHash, e.Position = head.Seq, head.Hash, head.Position+1
	} else if head.Seq != 0 {
		e.PrevHash = head.Hash // an older version's event: the hash link only
	}
	data, err := p.encode(e)
	if err != nil {
		return Head{}, fmt.Errorf("producer: %s %s of change %q of pipeline %q not published: %w", e.Type, e.ID, e.ChangeID, e.Pipeline, err)
	}
	msg := p.message(e, data)
	pubOpts := []jetstream.PublishOpt{jetstream.WithMsgID(e.ID), jetstream.WithExpectStream(p.cfg.Stream.Name),
		jetstream.WithExpectLastSequencePerSubject(head.Seq)}
	attempt, duplicate := 0, false
	op := func() (uint64, error) {
		attempt++
		actx, cancel := context.WithTimeout(ctx, p.cfg.AttemptTimeout)
		defer cancel()
		// A missing right to the subject ends the attempt at once with an
		// error naming it (natsperm), not a timeout retried for RetryFor.
		ack, err := natsperm.Do(actx, p.js.Conn(), natsperm.Subjects(msg.Subject), func(ctx context.Context) (*jetstream.PubAck, error) {
			return p.js.PublishMsg(ctx, msg, pubOpts...)
		})
		if err == nil {
			duplicate = ack.Duplicate
			return ack.Sequence, nil
		}
		if isWrongLastSeq(err) {
			return p.refused(ctx, e, msg.Subject, head.Seq, err)
		}
		if ctx.Err() != nil || !transient(err) {
			return 0, backoff.Permanent(err)
		}
		return 0, err
	}
	b := backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(50*time.Millisecond), backoff.WithMaxElapsedTime(p.cfg.RetryFor)), ctx)
	seq, err := backoff.RetryNotifyWithData(op, b, func(err error, wait time.Duration) {
		p.log.Warn("publish failed, retrying", "event", e.ID, "subject", msg.Subject, "attempt", attempt, "wait", wait, "err", err)
	})
	if err != nil {
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		return Head{}, fmt.Errorf("producer: publish %s %s: %w", e.Type, e.ID, err)
	}
	if duplicate {
		// The stream already had this event id: the message stored is the
		// first one published with it, which a retry carries byte for
		// byte, but a caller reusing an id may not. Its Head is the truth.
		return p.headAt(ctx, seq)
	}
	return Head{Seq: seq, Hash: events.Hash(data), Position: e.Position, Signature: msg.Header.Get(trust.Header)}, nil
}

// headAt is the Head of the message stored at seq. The server has just
// said it stored seq, but a direct get may be answered by a replica that
// has not applied it yet ("no message found"): that is retried like a
// transient failure, within RetryFor.
func (p *Producer) headAt(ctx context.Context, seq uint64) (Head, error) {
	r := Retry{For: p.cfg.RetryFor, AttemptTimeout: p.cfg.AttemptTimeout, Logger: p.log.With("seq", seq)}
	m, err := retry(ctx, p.js, r, "read the event the stream acknowledged", func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
		m, err := p.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil, fmt.Errorf("%w: %w", errNotApplied, err)
		}
		return m, err
	})
	if err != nil {
		return Head{}, fmt.Errorf("producer: read the event stored at %d: %w", seq, err)
	}
	h := Head{Seq: seq, Hash: events.Hash(m.Data), Signature: m.Header.Get(trust.Header)}
	if e, err := events.Decode(m.Data); err == nil {
		h.Position = e.Position
	}
	return h, nil
}

// message is the NATS message that publishes e, encoded as data, signed
// if the producer has a Signer.
func (p *Producer) message(e events.Event, data []byte) *nats.Msg {
	msg := &nats.Msg{Subject: p.Subject(e.Pipeline, e.ChangeID), Data: data, Header: nats.Header{}}
	if p.cfg.Signer != nil {
		msg.Header.Set(trust.Header, p.cfg.Signer.Sign(data))
	}
	return msg
}

// Signer is the producer's signing key (Config.Signer), nil if it
// publishes unsigned events.
func (p *Producer) Signer() *trust.Signer { return p.cfg.Signer }

// refused decides what a publish that the stream refused for a wrong last
// sequence means, by reading the subject's newest message again: our own
// event (an earlier attempt landed: success), another writer's newer event
// (ErrConflict, permanent), or the sequence we expected (the refusal was
// spurious, as a replicated stream sometimes answers while a proposal on
// the subject is in flight: retry). A failed read is retried rather than
// taken for a conflict.
func (p *Producer) refused(ctx context.Context, e events.Event, subject string, expected uint64, pubErr error) (uint64, error) {
	rctx, cancel := context.WithTimeout(ctx, p.cfg.AttemptTimeout)
	defer cancel()
	var last lastMsg
	m, err := p.lastMsg(rctx, subject)
	switch {
	case err == nil:
		last = lastMsg{seq: m.Sequence, id: m.Header.Get(jetstream.MsgIDHeader)}
	case errors.Is(err, jetstream.ErrMsgNotFound): // no events: last sequence 0
	case ctx.Err() != nil || !retryable(err):
		return 0, backoff.Permanent(fmt.Errorf("%w; reading the change's newest event to check it failed: %w", pubErr, err))
	default:
		return 0, fmt.Errorf("%w; reading the change's newest event to check it failed: %w", pubErr, err)
	}
	switch judgeRefusal(expected, e.ID, last) {
	case refusalLanded:
		return last.seq, nil
	case refusalConflict:
		return 0, backoff.Permanent(fmt.Errorf("%w: %s %s/%s: expected last sequence %d, the change is at %d: %w",
			ErrConflict, e.Type, e.Pipeline, e.ChangeID, expected, last.seq, pubErr))
	case refusalSpurious:
		p.log.Warn("publish refused for a wrong last sequence although the change is at the expected one; retrying",
			"event", e.ID, "subject", subject, "expected", expected, "err", pubErr)
		return 0, fmt.Errorf("%w: %w (the change is at the expected sequence %d)", errSpuriousRefusal, pubErr, expected)
	default: // refusalBehind
		p.log.Warn("publish refused for a wrong last sequence and the change reads older than expected; retrying",
			"event", e.ID, "subject", subject, "expected", expected, "read", last.seq, "err", pubErr)
		return 0, fmt.Errorf("%w: %w (the change reads at %d, before the expected %d)", errSpuriousRefusal, pubErr, last.seq, expected)
	}
}

// errSpuriousRefusal marks a wrong-last-sequence refusal that re-reading
// the subject did not confirm.
var errSpuriousRefusal = errors.New("unconfirmed wrong-last-sequence refusal")

// errNotApplied marks a read of a message the stream has acknowledged
// that a replica answered before applying it: retried, not reported.
var errNotApplied = errors.New("acknowledged message not yet readable on the replica that answered")

// lastMsg is a subject's newest message as re-read after a refusal; the
// zero value means the subject has none.
type lastMsg struct {
	seq uint64
	id  string // its Nats-Msg-Id
}

// refusal is what a wrong-last-sequence refusal turns out to be.
type refusal int

const (
	// refusalConflict: another writer's event is newer than the one the
	// publish expected. The caller's view is stale.
	refusalConflict refusal = iota
	// refusalLanded: the newest event is ours; an earlier attempt whose
	// answer was lost stored it (the server checks the expected sequence
	// before duplicates, so the retry was refused).
	refusalLanded
	// refusalSpurious: the subject is at the expected sequence, so nothing
	// was in the way: the refusal did not reflect the stream's state.
	refusalSpurious
	// refusalBehind: the read shows an older sequence than expected, which
	// a subject that only grows cannot have: the read was served by a
	// replica that has not caught up. Not evidence of a conflict.
	refusalBehind
)

// judgeRefusal decides what a refusal means given the subject's newest
// message as re-read (the zero lastMsg: none).
func judgeRefusal(expected uint64, id string, last lastMsg) refusal {
	switch {
	case last.seq != 0 && last.id == id:
		return refusalLanded
	case last.seq > expected:
		return refusalConflict
	case last.seq == expected:
		return refusalSpurious
	default:
		return refusalBehind
	}
}

// Last returns the newest event of a change and its Head, or ErrNoEvents
// if the change has none. It reads the message and counts the change's
// messages (two requests), retrying transient failures for up to
// Config.RetryFor.
//
// A newest message that is not a valid event of the change — it does not
// decode, or it is another change's event (events.CheckSubject) — is a
// *BadEventError (ErrBadEvent) with its Head: the change's state is
// unknown, and only an event recorded After that Head moves it on. An
// event that is not where it was written — its Position is not the
// number of messages on its subject, as with a copy of an earlier event
// published again — is returned with its Head and an *OutOfPlaceError
// (ErrOutOfPlace): whatever it claims, only an event recorded After it
// moves the change on.
func (p *Producer) Last(ctx context.Context, pipeline, changeID string) (events.Event, Head, error) {
	subject := p.Subject(pipeline, changeID)
	r := Retry{For: p.cfg.RetryFor, AttemptTimeout: p.cfg.AttemptTimeout, Logger: p.log.With("subject", subject)}
	var last lastRead
	_, err := retry(ctx, p.js, r, "read last event", func(ctx context.Context) (struct{}, error) {
		var err error
		last, err = readPlaced(ctx, p.stream, p.cfg.Stream.Name, subject)
		return struct{}{}, err
	})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return events.Event{}, Head{}, ErrNoEvents
	}
	if err != nil {
		return events.Event{}, Head{}, fmt.Errorf("producer: last event of %s/%s: %w", pipeline, changeID, err)
	}
	return judgeMsg(p.cfg.Stream, pipeline, changeID, last)
}

// Newest is one change's newest event as LastOf reads it: Last's results.
type Newest struct {
	Event events.Event
	Head  Head
	Err   error
}

// LastOf is Last for several changes of one pipeline, as a runner plans
// them: it counts the messages of every change of the pipeline at once
// (one request) and reads each change's newest message (one request
// each), instead of Last's two requests per change. A change whose newest
// event does not agree with the count (a message landed in between, or the
// event is out of its place) is read again with Last.
func (p *Producer) LastOf(ctx context.Context, pipeline string, changeIDs []string) ([]Newest, error) {
	out := make([]Newest, len(changeIDs))
	filter := p.cfg.Stream.SubjectPrefix + "." + events.EncodeToken(pipeline) + ".>"
	r := Retry{For: p.cfg.RetryFor, AttemptTimeout: p.cfg.AttemptTimeout, Logger: p.log.With("subjects", filter)}
	counts, err := retry(ctx, p.js, r, "count the pipeline's events", func(ctx context.Context) (map[string]uint64, error) {
		info, err := p.stream.Info(ctx, jetstream.WithSubjectFilter(filter))
		if err != nil {
			return nil, err
		}
		return info.State.Subjects, nil
	})
	if err != nil {
		return nil, fmt.Errorf("producer: count the events of pipeline %q: %w", pipeline, err)
	}
	for i, c := range changeIDs {
		subject := p.Subject(pipeline, c)
		n := counts[subject]
		if n == 0 { // nothing there when counted: read it as Last does, in case one landed since
			out[i].Event, out[i].Head, out[i].Err = p.Last(ctx, pipeline, c)
			continue
		}
		m, err := retry(ctx, p.js, r, "read last event", func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
			return p.lastMsg(ctx, subject)
		})
		if err != nil {
			return nil, fmt.Errorf("producer: last event of %s/%s: %w", pipeline, c, err)
		}
		r := newLastRead(m, n)
		if _, atCount := r.placed(); !atCount {
			// Out of place, or a message without a position (an older
			// writer's, or not an event), whose count must be read with it.
			out[i].Event, out[i].Head, out[i].Err = p.Last(ctx, pipeline, c)
			continue
		}
		out[i].Event, out[i].Head, out[i].Err = judgeMsg(p.cfg.Stream, pipeline, c, r)
	}
	return out, nil
}

// First returns the oldest event of a change still on the stream and its
// Head (ErrNoEvents if it has none; a *BadEventError if that message is not
// a valid event of the change). It tells whether a change's hash chain had
// started: an event written at schema version 2 or later carries it.
func (p *Producer) First(ctx context.Context, pipeline, changeID string) (events.Event, Head, error) {
	subject := p.Subject(pipeline, changeID)
	r := Retry{For: p.cfg.RetryFor, AttemptTimeout: p.cfg.AttemptTimeout, Logger: p.log.With("subject", subject)}
	m, err := retry(ctx, p.js, r, "read first event", func(ctx context.Context) (*jetstream.RawStreamMsg, error) {
		return p.stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subject))
	})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return events.Event{}, Head{}, ErrNoEvents
	}
	if err != nil {
		return events.Event{}, Head{}, fmt.Errorf("producer: first event of %s/%s: %w", pipeline, changeID, err)
	}
	return judgeMsg(p.cfg.Stream, pipeline, changeID, newLastRead(m, 1))
}

// ReadLast is Last for read-only tools: it reads a change's newest event
// from the stream cfg describes without a Producer, so without creating
// or checking the stream, in one attempt. Its results and errors are
// Last's (ErrNoEvents, *BadEventError, *OutOfPlaceError).
func ReadLast(ctx context.Context, js jetstream.JetStream, cfg StreamConfig, pipeline, changeID string) (events.Event, Head, error) {
	if err := cfg.Validate(); err != nil {
		return events.Event{}, Head{}, err
	}
	s, err := js.Stream(ctx, cfg.Name)
	if err != nil {
		return events.Event{}, Head{}, fmt.Errorf("producer: stream %s: %w", cfg.Name, err)
	}
	last, err := readPlaced(ctx, s, cfg.Name, events.Subject(cfg.SubjectPrefix, pipeline, changeID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return events.Event{}, Head{}, ErrNoEvents
	}
	if err != nil {
		return events.Event{}, Head{}, fmt.Errorf("producer: last event of %s/%s: %w", pipeline, changeID, err)
	}
	return judgeMsg(cfg, pipeline, changeID, last)
}

// lastRead is a subject's newest message, decoded once, and how many
// messages the subject held when it was read.
type lastRead struct {
	msg   *jetstream.RawStreamMsg
	count uint64
	event events.Event
	err   error // the message does not decode
}

func newLastRead(m *jetstream.RawStreamMsg, count uint64) lastRead {
	e, err := events.Decode(m.Data)
	return lastRead{msg: m, count: count, event: e, err: err}
}

// placed reports whether the message is an event that says its position,
// and whether that position is the count.
func (r lastRead) placed() (placed, atCount bool) {
	placed = r.err == nil && r.event.SchemaVersion >= events.ChainVersion
	return placed, placed && r.event.Position == r.count
}

// readPlaced reads a subject's newest message and its message count as of
// one moment. An event whose position is the count read right after it is
// done; otherwise the count is read before and after the message, and they
// are read again if the two differ (a message landed in between) or if the
// message's position disagrees with them (a replica or mirror that had not
// caught up may have answered), a few times, before the disagreement is
// believed.
func readPlaced(ctx context.Context, s jetstream.Stream, name, subject string) (lastRead, error) {
	// The usual case first: an event whose position is the count read
	// right after it was the newest when counted.
	m, err := lastMsgOf(ctx, s, name, subject)
	if err != nil {
		return lastRead{}, err
	}
	n, err := subjectCount(ctx, s, subject)
	if err != nil {
		return lastRead{}, err
	}
	r := newLastRead(m, n)
	if _, atCount := r.placed(); atCount {
		return r, nil
	}
	for attempt := 0; ; attempt++ {
		before, err := subjectCount(ctx, s, subject)
		if err != nil {
			return r, err
		}
		m, err := lastMsgOf(ctx, s, name, subject)
		if err != nil {
			return r, err
		}
		after, err := subjectCount(ctx, s, subject)
		if err != nil {
			return r, err
		}
		r = newLastRead(m, after)
		placed, atCount := r.placed()
		if before == after && (!placed || atCount) || attempt == 4 {
			return r, nil
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 40 * time.Millisecond):
		}
	}
}

// subjectCount is how many messages the stream holds on subject.
func subjectCount(ctx context.Context, s jetstream.Stream, subject string) (uint64, error) {
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, err
	}
	return info.State.Subjects[subject], nil
}

// judgeMsg decodes a message read from a change's subject and checks that
// it is an event of that change, where it was written: a message that is
// not is a *BadEventError, an event out of its place an *OutOfPlaceError
// (with the event), each with the message's Head (for the newest, what a
// resolution is recorded after).
func judgeMsg(cfg StreamConfig, pipeline, changeID string, r lastRead) (events.Event, Head, error) {
	m := r.msg
	h := Head{Seq: m.Sequence, Hash: events.Hash(m.Data), Position: r.count, Signature: m.Header.Get(trust.Header)}
	e, err := r.event, r.err
	if err == nil {
		err = events.CheckSubject(cfg.SubjectPrefix, m.Subject, e)
	}
	if err != nil {
		return events.Event{}, h, &BadEventError{Stream: cfg.Name, Subject: m.Subject, Pipeline: pipeline, ChangeID: changeID,
			Head: h, Size: len(m.Data), Err: err}
	}
	if e.SchemaVersion >= events.ChainVersion && e.Position != r.count {
		return e, h, &OutOfPlaceError{Stream: cfg.Name, Subject: m.Subject, Pipeline: pipeline, ChangeID: changeID,
			Head: h, Type: e.Type, Position: e.Position, PrevSeq: e.PrevSeq}
	}
	return e, h, nil
}

// encode encodes e after fitting its error message and trace into the
// event limits (see Publish). Invalid UTF-8 in them (a command's raw
// output) becomes U+FFFD, as JSON would write it anyway.
func (p *Producer) encode(e events.Event) ([]byte, error) {
	msg := strings.ToValidUTF8(e.ErrorMessage, "\uFFFD")
	trace := strings.ToValidUTF8(e.ErrorTrace, "\uFFFD")
	e.ErrorMessage = events.Truncate(msg, events.MaxMessageLen)
	e.ErrorTrace = events.Truncate(trace, events.MaxTraceLen)
	data, err := events.Encode(e)
	// Within its limit, a trace that JSON must escape heavily can still
	// take the encoded event over MaxEventBytes: keep less of it.
	for events.EventTooLarge(err) && e.ErrorTrace != "" {
		e.ErrorTrace = events.Truncate(trace, len(e.ErrorTrace)/2)
		data, err = events.Encode(e)
	}
	if err == nil && (len(e.ErrorMessage) < len(msg) || len(e.ErrorTrace) < len(trace)) {
		p.log.Warn("error output truncated to fit the event size limits", "event", e.ID, "pipeline", e.Pipeline, "change", e.ChangeID,
			"messageBytes", len(msg), "keptMessageBytes", len(e.ErrorMessage), "traceBytes", len(trace), "keptTraceBytes", len(e.ErrorTrace))
	}
	return data, err
}

// lastMsg reads a subject's newest message (see lastMsgOf).
func (p *Producer) lastMsg(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error) {
	return lastMsgOf(ctx, p.stream, p.cfg.Stream.Name, subject)
}

// lastMsgOf reads a subject's newest message. A direct get may be answered
// by a mirror of the stream (see MirrorConfig), which can be behind: such
// an answer is asked again a few times, for the stream's own.
func lastMsgOf(ctx context.Context, s jetstream.Stream, name, subject string) (*jetstream.RawStreamMsg, error) {
	for i := 0; ; i++ {
		m, err := s.GetLastMsgForSubject(ctx, subject)
		if err != nil || i == 7 || m.Header.Get(jetstream.StreamHeader) == "" || m.Header.Get(jetstream.StreamHeader) == name {
			return m, err
		}
	}
}

func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// transient reports whether a publish error may succeed if tried again.
// An error the server answered with is a decision, not a glitch, unless it
// says "temporarily unavailable"; anything else (no answer, no responders
// while a leader is elected, a reconnect in progress) is worth another
// attempt, which the message id makes safe.
func transient(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return temporary(apiErr)
	}
	return !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubject) && !errors.Is(err, nats.ErrPermissionViolation) &&
		!errors.Is(err, nats.ErrMaxPayload) && !errors.Is(err, jetstream.ErrInvalidSubject)
}

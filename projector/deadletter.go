package projector

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
)

// Headers on dead-lettered messages. Every dead letter carries all of
// them; the original's own headers follow on a full copy, those of
// JetStream ("Nats-…", which would steer the dead-letter publish: an
// expected stream or last sequence, a message id) renamed to
// "Auditflow-Original-Nats-…".
const (
	HeaderReason   = "Auditflow-Deadletter-Reason"
	HeaderSubject  = "Auditflow-Original-Subject"
	HeaderSequence = "Auditflow-Original-Sequence"
	HeaderStream   = "Auditflow-Original-Stream"
	HeaderHash     = "Auditflow-Original-Hash" // events.Hash of the original data
	HeaderSize     = "Auditflow-Original-Size" // bytes of the original data
	HeaderConsumer = "Auditflow-Consumer"
	// HeaderCopy is CopyFull when the body is the original data, or
	// CopyReference when it did not fit: then the body is at most the
	// first ReferencePreview bytes, and the original stays in its stream
	// at its sequence (the audit stream denies deletes), checkable by its
	// hash.
	HeaderCopy = "Auditflow-Deadletter-Copy"
)

// Values of HeaderCopy.
const (
	CopyFull      = "full"
	CopyReference = "reference"
)

// ReferencePreview is the most bytes of the original a reference dead
// letter carries, for an operator browsing the dead-letter stream.
const ReferencePreview = 256

const (
	maxReasonLen          = 1024 // bytes of the reason header
	maxDeadLetterSubject  = 512  // longer original subjects go to <prefix>.oversized-subject
	originalHeaderPrefix  = "Auditflow-Original-"
	oversizedSubjectToken = "oversized-subject"
)

// original is a message as the dead letter describes it.
type original struct {
	stream, subject string
	seq             uint64
	data            []byte
	header          nats.Header
}

// deadLetterMsg builds the dead letter for o. It is a full copy when the
// copy with its headers fits in limit bytes of payload (headers and data,
// as NATS counts them: the connection's max payload, or the dead-letter
// stream's max message size if smaller), otherwise a reference; a
// reference is always small, whatever the original's size. forceReference
// asks for a reference (the server refused the full copy's size).
func deadLetterMsg(prefix, consumer string, o original, reason string, limit int64, forceReference bool) *nats.Msg {
	subject := prefix + "." + o.subject
	if len(o.subject) > maxDeadLetterSubject {
		// The publish's control line must stay under the server's limit;
		// the original subject is in a header.
		subject = prefix + "." + oversizedSubjectToken
	}
	base := func() *nats.Msg {
		m := &nats.Msg{Subject: subject, Header: nats.Header{}}
		// The id makes the copy idempotent if this message is redelivered.
		m.Header.Set(jetstream.MsgIDHeader, consumer+"-"+strconv.FormatUint(o.seq, 10))
		m.Header.Set(HeaderReason, oneLine(reason, maxReasonLen))
		m.Header.Set(HeaderSubject, o.subject)
		m.Header.Set(HeaderSequence, strconv.FormatUint(o.seq, 10))
		m.Header.Set(HeaderStream, o.stream)
		m.Header.Set(HeaderHash, events.Hash(o.data))
		m.Header.Set(HeaderSize, strconv.Itoa(len(o.data)))
		m.Header.Set(HeaderConsumer, consumer)
		return m
	}
	if !forceReference {
		m := base()
		for k, vs := range o.header {
			if !validHeaderKey(k) {
				continue
			}
			if strings.HasPrefix(strings.ToLower(k), "nats-") {
				k = originalHeaderPrefix + k
			}
			if _, ours := m.Header[k]; !ours {
				m.Header[k] = vs
			}
		}
		m.Header.Set(HeaderCopy, CopyFull)
		m.Data = o.data
		if payloadSize(m) <= limit {
			return m
		}
	}
	m := base()
	m.Header.Set(HeaderCopy, CopyReference)
	m.Data = o.data[:min(len(o.data), ReferencePreview)]
	if payloadSize(m) > limit {
		m.Data = nil
	}
	return m
}

// payloadSize is what NATS counts against max payload: headers and data.
func payloadSize(m *nats.Msg) int64 {
	return int64(m.Size() - len(m.Subject) - len(m.Reply))
}

// validHeaderKey: an RFC 7230 token, which is what nats.go accepts; a copy
// with any other key could never be published.
func validHeaderKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

// Dead-letter publishing is bounded: a few attempts, each within a
// timeout, then the message is left for redelivery after a growing delay,
// so a dead-letter stream that cannot be written holds nothing else up.
var (
	deadLetterAttempts = 3
	deadLetterTimeout  = 2 * time.Second // per attempt, and at most AckWait/2
	deadLetterRetryMin = time.Second     // delay before a failed dead letter comes back…
	deadLetterRetryMax = time.Minute     // …growing to this
)

// deadLetter copies d's message to the dead-letter stream with reason and
// terminates it, so it never blocks the events behind it. If the copy
// cannot be published within a few attempts, it logs, counts and leaves
// the message for redelivery after a delay. It reports whether the message
// was dead-lettered.
func (p *Projector) deadLetter(ctx context.Context, d delivery, reason error) bool {
	m := d.msg
	o := original{stream: p.cfg.Stream.Name, subject: m.Subject(), seq: d.seq, data: m.Data(), header: m.Headers()}
	dl, err := p.writeDeadLetter(ctx, o, reason)
	if err != nil {
		p.deadLetterFailures.Add(1)
		p.health.deadLetterFailed(err)
		delay := growingDelay(d.delivered, deadLetterRetryMin, deadLetterRetryMax)
		p.log.Error("dead letter not written; the message is left for redelivery", "seq", d.seq,
			"subject", m.Subject(), "to", dl.Subject, "reason", reason, "err", err, "retryIn", delay)
		p.settle(m, func() error { return m.NakWithDelay(delay) })
		return false
	}
	p.health.deadLetterOK()
	p.progress.finish(d.seq) // deliberately not stored: the checkpoint may pass it
	p.deadLettered.Add(1)    // before the terminate, as applied is counted before the ack
	p.settle(m, func() error { return m.TermWithReason(truncate(oneLine(reason.Error(), 256), 256)) })
	p.health.progressed()
	p.log.Error("dead-lettered an event that cannot be stored", "seq", d.seq, "subject", m.Subject(), "to", dl.Subject,
		"copy", dl.Header.Get(HeaderCopy), "reason", reason)
	return true
}

// publishDeadLetter dead-letters o, an event read from the stream rather
// than delivered (a parked one), and reports a failure.
func (p *Projector) publishDeadLetter(ctx context.Context, o original, reason error) error {
	dl, err := p.writeDeadLetter(ctx, o, reason)
	if err != nil {
		p.deadLetterFailures.Add(1)
		p.health.deadLetterFailed(err)
		p.log.Error("dead letter not written", "seq", o.seq, "subject", o.subject, "reason", reason, "err", err)
		return err
	}
	p.health.deadLetterOK()
	p.log.Error("dead-lettered an event that cannot be stored", "seq", o.seq, "subject", o.subject, "to", dl.Subject,
		"copy", dl.Header.Get(HeaderCopy), "reason", reason)
	return nil
}

// writeDeadLetter publishes o's dead letter, in a few attempts, and
// returns it.
func (p *Projector) writeDeadLetter(ctx context.Context, o original, reason error) (*nats.Msg, error) {
	limit := p.nc.MaxPayload()
	if p.deadLetterMaxMsgSize > 0 && int64(p.deadLetterMaxMsgSize) < limit {
		limit = int64(p.deadLetterMaxMsgSize)
	}
	dl := deadLetterMsg(p.cfg.DeadLetterPrefix, p.cfg.Consumer, o, reason.Error(), limit, false)
	timeout := min(deadLetterTimeout, p.cfg.AckWait/2)
	var err error
	for attempt := range deadLetterAttempts {
		if attempt > 0 {
			sleep(ctx, time.Duration(100<<(2*(attempt-1)))*time.Millisecond) // 100ms, 400ms
		}
		if ctx.Err() != nil {
			break
		}
		actx, cancel := context.WithTimeout(ctx, timeout)
		_, err = p.js.PublishMsg(actx, dl)
		cancel()
		if err == nil {
			break
		}
		if dl.Header.Get(HeaderCopy) == CopyFull && (errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum)) {
			// The dead-letter stream is stricter than we knew.
			dl = deadLetterMsg(p.cfg.DeadLetterPrefix, p.cfg.Consumer, o, reason.Error(), limit, true)
		}
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	return dl, err
}

// deadLetterLoop dead-letters what the fetcher hands it, off the fetch
// path, until in is closed. Once ctx is done, what is left goes back to
// the stream at once, for another projector.
func (p *Projector) deadLetterLoop(ctx context.Context, in <-chan []delivery) {
	for share := range in {
		for _, d := range share {
			if ctx.Err() != nil {
				p.settle(d.msg, d.msg.Nak)
				continue
			}
			dctx, cancel := shutdownContext(ctx, p.cfg.ShutdownTimeout)
			p.deadLetter(dctx, d, d.reason)
			cancel()
		}
	}
}

// growingDelay is min doubled for each delivery after the first, capped at
// max: how long a message left for later stays away.
func growingDelay(delivered uint64, minDelay, maxDelay time.Duration) time.Duration {
	d := minDelay
	for i := uint64(1); i < delivered && d < maxDelay; i++ {
		d *= 2
	}
	return min(d, maxDelay)
}

// refusalReason is the dead-letter reason for a record the store refused.
func refusalReason(err error) error {
	return fmt.Errorf("%w: %w", ErrStoreRefused, err)
}

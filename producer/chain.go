package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
)

// Before returns the message right before seq on subject in stream s (a
// handle from js.Stream), as the event at seq must name it to extend its change's
// chain (events.CheckChain); the zero Prev if seq is the subject's first
// message. prefix is the stream's subject prefix, to tell an event of the
// change from a message that is not one (which has no ID or Version).
//
// It asks the stream for the subject's last message up to seq-1, then
// confirms that the next message on the subject after that one is seq
// itself: a replica or mirror that has not caught up can miss a message,
// never invent one, so a confirmed answer is the stream's. An answer it
// cannot confirm is asked again a few times, then returned as an error
// (retry later). It needs the right to the stream's direct gets
// ($JS.API.DIRECT.GET.<stream>).
func Before(ctx context.Context, js jetstream.JetStream, s jetstream.Stream, prefix, subject string, seq uint64) (events.Prev, error) {
	stream := s.CachedInfo().Config.Name
	var lastErr error
	for attempt := 0; attempt < 6; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return events.Prev{}, ctx.Err()
			case <-time.After(time.Duration(attempt) * 50 * time.Millisecond):
			}
		}
		prev, m, err := lastUpTo(ctx, js, stream, subject, seq-1)
		if err != nil {
			lastErr = err
			if !Transient(err) && !errors.Is(err, errNotTheStream) {
				return events.Prev{}, err
			}
			continue
		}
		// The first message on the subject after prev must be seq.
		next, err := s.GetMsg(ctx, prev.Seq+1, jetstream.WithGetMsgSubject(subject))
		switch {
		case err == nil && next.Sequence == seq:
		case err == nil && next.Sequence < seq:
			lastErr = fmt.Errorf("sequence %d on %s was not in the answer about what precedes %d", next.Sequence, subject, seq)
			continue
		case err == nil:
			return events.Prev{}, fmt.Errorf("producer: stream %s has no message %d on %s", stream, seq, subject)
		case errors.Is(err, jetstream.ErrMsgNotFound):
			lastErr = fmt.Errorf("message %d on %s not found yet", seq, subject)
			continue
		case Transient(err):
			lastErr = err
			continue
		default:
			return events.Prev{}, fmt.Errorf("producer: what precedes %d on %s: %w", seq, subject, err)
		}
		if m != nil {
			e, derr := events.Decode(m.Data)
			if derr == nil {
				derr = events.CheckSubject(prefix, subject, e)
			}
			prev = events.PrevOf(prev.Seq, events.Hash(m.Data), e, derr)
		}
		return prev, nil
	}
	return events.Prev{}, fmt.Errorf("producer: what precedes %d on %s: %w", seq, subject, lastErr)
}

var errNotTheStream = errors.New("answered by another stream (a mirror)")

// lastUpTo reads the last message on subject at or below upTo with a
// direct get (multi_last with up_to_seq: JetStream has no "previous by
// subject"); nil and the zero Prev if there is none.
func lastUpTo(ctx context.Context, js jetstream.JetStream, stream, subject string, upTo uint64) (events.Prev, *jetstream.RawStreamMsg, error) {
	if upTo == 0 {
		return events.Prev{}, nil, nil
	}
	req, _ := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
		UpToSeq   uint64   `json:"up_to_seq"`
		Batch     int      `json:"batch"`
	}{[]string{subject}, upTo, 1})
	prefix := js.Options().APIPrefix
	if prefix == "" {
		prefix = jetstream.DefaultAPIPrefix
	}
	resp, err := js.Conn().RequestWithContext(ctx, prefix+"DIRECT.GET."+stream, req)
	if err != nil {
		return events.Prev{}, nil, err
	}
	if status := resp.Header.Get("Status"); status != "" {
		if status == "404" {
			return events.Prev{}, nil, nil
		}
		return events.Prev{}, nil, fmt.Errorf("producer: direct get on %s: %s %s", stream, status, resp.Header.Get("Description"))
	}
	if s := resp.Header.Get(jetstream.StreamHeader); s != "" && s != stream {
		return events.Prev{}, nil, errNotTheStream
	}
	n, err := strconv.ParseUint(resp.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil || n == 0 || n > upTo || resp.Header.Get(jetstream.SubjectHeader) != subject {
		return events.Prev{}, nil, fmt.Errorf("producer: direct get on %s: unexpected answer (sequence %q, subject %q)",
			stream, resp.Header.Get(jetstream.SequenceHeader), resp.Header.Get(jetstream.SubjectHeader))
	}
	return events.Prev{Seq: n}, &jetstream.RawStreamMsg{Subject: subject, Sequence: n, Header: resp.Header, Data: resp.Data}, nil
}

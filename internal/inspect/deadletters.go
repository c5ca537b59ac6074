package inspect

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/projector"
)

// ErrNoDeadLetterStream: AUDIT_DEADLETTER does not exist.
var ErrNoDeadLetterStream = errors.New("inspect: stream " + projector.DeadLetterStream + " does not exist (auditflow init creates it)")

// DeadLetter is a message of AUDIT_DEADLETTER as shown.
type DeadLetter struct {
	Seq              uint64    `json:"seq"`
	Time             time.Time `json:"time"`
	Reason           string    `json:"reason"`
	OriginalStream   string    `json:"originalStream"`
	OriginalSubject  string    `json:"originalSubject"`
	OriginalSequence uint64    `json:"originalSequence"`
	OriginalSize     int       `json:"originalSize"`
	OriginalHash     string    `json:"originalHash"`
	Consumer         string    `json:"consumer"`
	Copy             string    `json:"copy"`           // full: Body is the original; reference: its first bytes, the original stays in its stream
	Body             string    `json:"body,omitempty"` // with show: the body, if it is UTF-8
	BodyBase64       []byte    `json:"bodyBase64,omitempty"`
}

// DeadLetterOf reads a dead letter's headers, and with body its body.
func DeadLetterOf(m *jetstream.RawStreamMsg, body bool) DeadLetter {
	h := m.Header
	seq, _ := strconv.ParseUint(h.Get(projector.HeaderSequence), 10, 64)
	size, _ := strconv.Atoi(h.Get(projector.HeaderSize))
	v := DeadLetter{Seq: m.Sequence, Time: m.Time.UTC(), Reason: h.Get(projector.HeaderReason), OriginalStream: h.Get(projector.HeaderStream),
		OriginalSubject: h.Get(projector.HeaderSubject), OriginalSequence: seq, OriginalSize: size, OriginalHash: h.Get(projector.HeaderHash),
		Consumer: h.Get(projector.HeaderConsumer), Copy: h.Get(projector.HeaderCopy)}
	if body {
		if utf8.Valid(m.Data) {
			v.Body = string(m.Data)
		} else {
			v.BodyBase64 = m.Data
		}
	}
	return v
}

// ReadDeadLetters reads the dead letters with sequence above after, at
// most limit of them (0: all), oldest first, and the number on the stream.
func ReadDeadLetters(ctx context.Context, js jetstream.JetStream, after uint64, limit int, log *slog.Logger) ([]DeadLetter, uint64, error) {
	s, err := js.Stream(ctx, projector.DeadLetterStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, 0, ErrNoDeadLetterStream
	}
	if err != nil {
		return nil, 0, err
	}
	state := s.CachedInfo().State
	out := []DeadLetter{}
	if state.Msgs == 0 || state.LastSeq <= after {
		return out, state.Msgs, nil
	}
	errEnough := errors.New("enough")
	sc := projector.ScanConfig{Stream: projector.DeadLetterStream, FromSeq: max(after+1, state.FirstSeq), ToSeq: state.LastSeq, BatchSize: 500, Logger: log}
	err = projector.Scan(ctx, js, sc, func(msgs []projector.StreamMsg) error {
		for _, m := range msgs {
			raw, err := s.GetMsg(ctx, m.Seq) // for its time; dead letters are few
			if err != nil {
				return err
			}
			out = append(out, DeadLetterOf(raw, false))
			if limit > 0 && len(out) >= limit {
				return errEnough
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		return nil, 0, err
	}
	return out, state.Msgs, nil
}

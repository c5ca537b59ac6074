package inspect

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// MirrorBehindAfter is how long a mirror may go without news from its
// stream before a report calls it stalled: the server's own stall check
// (sourceHealthCheckInterval in nats-server) is 10 s.
const MirrorBehindAfter = 10 * time.Second

// MirrorLag is how far a mirror of the audit stream is behind it.
type MirrorLag struct {
	Name          string `json:"name"`
	StreamLastSeq uint64 `json:"streamLastSeq"`
	MirrorLastSeq uint64 `json:"mirrorLastSeq"`
	// Behind is StreamLastSeq-MirrorLastSeq: the events a loss of the
	// stream right now would lose. (The server's own "lag" is the last
	// count its consumer reported, and reads 0 while a mirror is stalled.)
	Behind uint64 `json:"behind"`
	// SinceContact is the time since the mirror last heard from its
	// stream; over MirrorBehindAfter it is stalled.
	SinceContact time.Duration `json:"sinceContactNs"`
	// Durable: it copies through a durable consumer and goes on within a
	// second of a leader change; an ephemeral one stalls 10 s to minutes.
	Durable bool   `json:"durable"`
	Error   string `json:"error,omitempty"` // the server's, when it cannot copy
}

// Stalled says whether m is behind and has heard nothing for over
// MirrorBehindAfter.
func (m MirrorLag) Stalled() bool { return m.Behind > 0 && m.SinceContact > MirrorBehindAfter }

// MirrorsOf lists the mirrors of stream with how far each is behind it.
func MirrorsOf(ctx context.Context, js jetstream.JetStream, stream string) ([]MirrorLag, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream, err)
	}
	last := s.CachedInfo().State.LastSeq
	out := []MirrorLag{} // read: none is [], not null (unread)
	list := js.ListStreams(ctx)
	for info := range list.Info() {
		m := info.Config.Mirror
		if m == nil || m.Name != stream || m.Domain != "" {
			continue
		}
		ml := MirrorLag{Name: info.Config.Name, StreamLastSeq: last, MirrorLastSeq: info.State.LastSeq, Durable: m.Consumer != nil}
		if last > ml.MirrorLastSeq {
			ml.Behind = last - ml.MirrorLastSeq
		}
		if si := info.Mirror; si != nil {
			ml.SinceContact = si.Active
			if si.Error != nil {
				ml.Error = si.Error.Error()
			}
		}
		out = append(out, ml)
	}
	if err := list.Err(); err != nil {
		return out, fmt.Errorf("list streams: %w", err)
	}
	return out, nil
}

// Say is m in a sentence, for reports and logs.
func (m MirrorLag) Say() string {
	s := fmt.Sprintf("%s at %d, %d behind %d; last heard from the stream %s ago", m.Name, m.MirrorLastSeq, m.Behind, m.StreamLastSeq, m.SinceContact.Round(time.Millisecond))
	if m.Stalled() {
		s += ": stalled (a loss of the stream now would lose these events"
		if !m.Durable {
			s += "; this mirror copies through an ephemeral consumer and may stay stalled for minutes after a leader change: auditflow init says how to replace it"
		}
		s += ")"
	}
	if m.Error != "" {
		s += "; error: " + m.Error
	}
	return s
}

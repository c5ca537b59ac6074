// Package tokenfloor finds the highest fencing token recorded on the
// audit stream: the floor above which a lock bucket created again must
// hand out tokens (lock.Config.TokenFloor).
//
// A lock's fencing token is the lock bucket's revision at acquisition, so
// a bucket deleted and created again would start again at 1, and a target
// that fences its writes (accepting only tokens at least as high as the
// last it saw) would refuse every later write. Every token a runner hands
// to a change is on the stream first (its ExecutionStarted carries it), so
// the stream's highest token is the highest any target can have seen.
//
// It lives below internal/cli (init, restore) and internal/runnercmd (the
// embedded mode), which both create the bucket, and above projector
// (Scan) and events (Decode), which it reads with; package lock, below
// them all, takes the result as a function.
package tokenfloor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/projector"
)

// Highest reads the audit stream (named stream) from its first message to
// its last now and returns the highest lock token on its events (0: none,
// or no such stream). It reads in batches with projector.Scan, which rides
// out a cluster's leader elections, and keeps one number: its memory does
// not grow with the stream. Messages that do not decode as events are
// skipped: no runner wrote them, so no target saw their token.
func Highest(ctx context.Context, js jetstream.JetStream, stream string, log *slog.Logger) (uint64, error) {
	s, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("tokenfloor: stream %s: %w", stream, err)
	}
	st := s.CachedInfo().State
	if st.Msgs == 0 {
		return 0, nil
	}
	var highest uint64
	err = projector.Scan(ctx, js, projector.ScanConfig{Stream: stream, FromSeq: st.FirstSeq, ToSeq: st.LastSeq, Logger: log},
		func(msgs []projector.StreamMsg) error {
			for _, m := range msgs {
				if e, err := events.Decode(m.Data); err == nil && e.LockToken > highest {
					highest = e.LockToken
				}
			}
			return nil
		})
	if err != nil {
		return 0, fmt.Errorf("tokenfloor: read %s: %w", stream, err)
	}
	return highest, nil
}

// Func is Highest as lock.Config.TokenFloor wants it.
func Func(js jetstream.JetStream, stream string, log *slog.Logger) func(context.Context) (uint64, error) {
	return func(ctx context.Context) (uint64, error) { return Highest(ctx, js, stream, log) }
}

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
// (Scan), producer (ReadStream) and events (Decode), which it reads with; package lock, below
// them all, takes the result as a function.
package tokenfloor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
)

// Highest reads the audit stream (named stream) from its first message to
// its last now and returns the highest lock token on its events (0: none,
// or no such stream). It reads in batches with projector.Scan, which rides
// out a cluster's leader elections, and keeps one number: its memory does
// not grow with the stream. Messages that do not decode as events are
// skipped: no runner wrote them, so no target saw their token.
func Highest(ctx context.Context, js jetstream.JetStream, stream string, log *slog.Logger) (uint64, error) {
	return HighestThrough(ctx, js, stream, 0, log)
}

// HighestThrough is Highest reading up to sequence last at least, when
// the caller knows the stream holds it (restore, which just wrote it): a
// stream's info answered right after a cluster's leader change may say
// fewer messages, and the scan then waits for the rest rather than
// stopping short.
func HighestThrough(ctx context.Context, js jetstream.JetStream, stream string, last uint64, log *slog.Logger) (uint64, error) {
	s, err := producer.ReadStream(ctx, js, stream, producer.Retry{For: time.Minute, Logger: log})
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("tokenfloor: stream %s: %w", stream, err)
	}
	st := s.CachedInfo().State
	to := max(st.LastSeq, last)
	if to == 0 || (st.Msgs == 0 && last == 0) {
		return 0, nil
	}
	var highest uint64
	err = projector.Scan(ctx, js, projector.ScanConfig{Stream: stream, FromSeq: max(st.FirstSeq, 1), ToSeq: to, Logger: log},
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

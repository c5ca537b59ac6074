package projector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/internal/natsperm"
)

// AuditWrite reports one attempt to write a batch into a store. Projectors
// publish one per attempt on <WritesPrefix>.<store>, so other services can
// watch throughput, latency and failures without touching the store.
type AuditWrite struct {
	Store    string `json:"store"`
	Consumer string `json:"consumer"`
	Worker   int    `json:"worker"`
	Count    int    `json:"count"`
	FirstSeq uint64 `json:"firstSeq"`
	LastSeq  uint64 `json:"lastSeq"`
	// Through is the contiguous checkpoint the write claimed
	// (stores.Batch.Through): everything at or below it is stored once the
	// write succeeds.
	Through  uint64        `json:"through,omitempty"`
	Duration time.Duration `json:"durationNs"`
	At       time.Time     `json:"at"`
	Error    string        `json:"error,omitempty"` // empty on success
	// SignaturesUnchecked: the projector runs without a trust list
	// (--insecure-no-trust): it stored every event as believed.
	SignaturesUnchecked bool `json:"signaturesUnchecked,omitempty"`
}

// publishWrite sends w without waiting: telemetry must not slow or block
// the projection. The AUDIT_WRITES stream keeps a week of them.
func (p *Projector) publishWrite(w AuditWrite) {
	b, err := json.Marshal(w)
	if err == nil {
		err = p.nc.Publish(p.cfg.WritesPrefix+"."+w.Store, b)
	}
	if err != nil {
		p.log.Debug("AuditWrite not published", "err", err)
	}
}

// SubscribeWrites calls fn for every AuditWrite published for store ("*"
// for all stores) from now on, until ctx is cancelled. fn runs on one
// goroutine, in arrival order. Malformed messages are skipped. It is a plain
// subscription: a subscriber that falls far behind loses messages (NATS
// slow-consumer protection); to read history, consume the AUDIT_WRITES
// stream instead. It is NewWriteSubscription followed by Run; use those to
// know when the subscription is live or to count lost messages.
func SubscribeWrites(ctx context.Context, nc *nats.Conn, prefix, store string, fn func(AuditWrite)) error {
	s, err := NewWriteSubscription(ctx, nc, prefix, store)
	if err != nil {
		return err
	}
	return s.Run(ctx, fn)
}

// subscribeTimeout bounds the wait for the server to confirm a
// subscription when the caller's context has no earlier deadline.
const subscribeTimeout = 10 * time.Second

// WriteSubscription is a live subscription to AuditWrite events.
type WriteSubscription struct {
	sub     *nats.Subscription
	ch      chan *nats.Msg
	dropped atomic.Int64 // as of unsubscribing; before, the subscription knows
}

// NewWriteSubscription subscribes to the AuditWrites for store ("*" for
// all stores) under prefix (default DefaultWritesPrefix) and returns once
// the server has registered the subscription, so that every AuditWrite
// published after it returns is received. Run delivers them; Close
// unsubscribes without running.
func NewWriteSubscription(ctx context.Context, nc *nats.Conn, prefix, store string) (*WriteSubscription, error) {
	if prefix == "" {
		prefix = DefaultWritesPrefix
	}
	s := &WriteSubscription{ch: make(chan *nats.Msg, 1024)}
	subject := prefix + "." + store
	before := nc.LastError()
	sub, err := nc.ChanSubscribe(subject, s.ch)
	if err != nil {
		return nil, fmt.Errorf("projector: subscribe writes: %w", err)
	}
	s.sub = sub
	// The flush's round trip means the server has the subscription, or
	// has refused it: a permissions violation arrives before the flush's
	// answer, only as the connection's last error.
	fctx, cancel := context.WithTimeout(ctx, subscribeTimeout)
	defer cancel()
	err = nc.FlushWithContext(fctx)
	if pe := natsperm.Since(nc, before, func(e *natsperm.Error) bool { return e.Op == "subscribe" && e.Subject == subject }); err == nil && pe != nil {
		err = pe
	}
	if err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("projector: subscribe writes: %w", err)
	}
	return s, nil
}

// Run calls fn for every AuditWrite received, on the calling goroutine and
// in arrival order, until ctx is cancelled; then it unsubscribes and
// returns nil. Malformed messages are skipped.
func (s *WriteSubscription) Run(ctx context.Context, fn func(AuditWrite)) error {
	defer func() { _ = s.Close() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-s.ch:
			var w AuditWrite
			if json.Unmarshal(m.Data, &w) == nil {
				fn(w)
			}
		}
	}
}

// Dropped returns how many AuditWrites were lost because fn fell behind
// and the client's buffer filled (NATS slow-consumer protection).
func (s *WriteSubscription) Dropped() int {
	if n, err := s.sub.Dropped(); err == nil {
		return n
	}
	return int(s.dropped.Load())
}

// Close unsubscribes. Messages already received are not delivered.
func (s *WriteSubscription) Close() error {
	if n, err := s.sub.Dropped(); err == nil {
		s.dropped.Store(int64(n))
	}
	if err := s.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrBadSubscription) && !errors.Is(err, nats.ErrConnectionClosed) {
		return fmt.Errorf("projector: unsubscribe writes: %w", err)
	}
	return nil
}

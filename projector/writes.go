package projector

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// AuditWrite reports one attempt to write a batch into a store. Projectors
// publish one per attempt on <WritesPrefix>.<store>, so other services can
// watch throughput, latency and failures without touching the store.
type AuditWrite struct {
	Store    string        `json:"store"`
	Consumer string        `json:"consumer"`
	Worker   int           `json:"worker"`
	Count    int           `json:"count"`
	FirstSeq uint64        `json:"firstSeq"`
	LastSeq  uint64        `json:"lastSeq"`
	Duration time.Duration `json:"durationNs"`
	At       time.Time     `json:"at"`
	Error    string        `json:"error,omitempty"` // empty on success
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
// stream instead.
func SubscribeWrites(ctx context.Context, nc *nats.Conn, prefix, store string, fn func(AuditWrite)) error {
	if prefix == "" {
		prefix = DefaultWritesPrefix
	}
	ch := make(chan *nats.Msg, 1024)
	sub, err := nc.ChanSubscribe(prefix+"."+store, ch)
	if err != nil {
		return fmt.Errorf("projector: subscribe writes: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-ch:
			var w AuditWrite
			if json.Unmarshal(m.Data, &w) == nil {
				fn(w)
			}
		}
	}
}

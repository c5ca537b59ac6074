package projector

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// inflight is the set of messages this process has fetched and not yet
// settled (acknowledged, negatively acknowledged or terminated): those
// waiting in a queue, being written or being dead-lettered. A heartbeat
// tells the server every AckWait/4 that they are in progress, so a slow
// write or a long queue is never redelivered behind itself, while the
// messages of a process that dies come back within AckWait.
type inflight struct {
	mu   sync.Mutex
	msgs map[jetstream.Msg]struct{}
}

func (f *inflight) add(ms []jetstream.Msg) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.msgs == nil {
		f.msgs = make(map[jetstream.Msg]struct{}, len(ms))
	}
	for _, m := range ms {
		f.msgs[m] = struct{}{}
	}
}

func (f *inflight) remove(m jetstream.Msg) {
	f.mu.Lock()
	delete(f.msgs, m)
	f.mu.Unlock()
}

func (f *inflight) snapshot() []jetstream.Msg {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]jetstream.Msg, 0, len(f.msgs))
	for m := range f.msgs {
		out = append(out, m)
	}
	return out
}

func (f *inflight) len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.msgs)
}

// heartbeat sends InProgress for every message in flight every
// AckWait/4 until ctx is done. A quarter leaves three heartbeats' worth of
// slack (a GC pause, a slow link) before the server would redeliver.
func (p *Projector) heartbeat(ctx context.Context) {
	t := time.NewTicker(p.cfg.AckWait / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, m := range p.inflight.snapshot() {
				// Fails only for a message settled since the snapshot (no
				// harm) or a lost connection (the server redelivers, as it
				// should for a process that cannot reach it).
				_ = m.InProgress()
			}
		}
	}
}

// settle ends a message's time in flight with op (Ack, Nak, Term…). A
// failed settle is harmless: the message is redelivered and every outcome
// is idempotent (store writes, the dead letter's message id).
func (p *Projector) settle(m jetstream.Msg, op func() error) {
	p.inflight.remove(m)
	if err := op(); err != nil {
		p.log.Debug("settling a message failed; it will be redelivered", "subject", m.Subject(), "err", err)
	}
}

package console

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/internal/inspect"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
)

// hub fans the rows each AuditWrite stored out to the browsers listening
// on /api/v1/events.
type hub struct {
	mu   sync.Mutex
	subs map[chan []byte]struct{}
	live bool // the AuditWrite subscription is up
}

func newHub() *hub { return &hub{subs: map[chan []byte]struct{}{}} }

func (h *hub) subscribe() chan []byte {
	ch := make(chan []byte, 64)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	return ch
}

func (h *hub) unsubscribe(ch chan []byte) {
	h.mu.Lock()
	delete(h.subs, ch)
	h.mu.Unlock()
}

func (h *hub) listeners() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// publish hands msg to every listener; one too slow to take it misses it
// (its page still catches up at its next update, which refetches).
func (h *hub) publish(msg []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs {
		select {
		case ch <- msg:
		default:
		}
	}
}

// liveEvent is the data of an "execution" SSE event: the rows one store
// write added, in the API's form.
type liveEvent struct {
	Store   string     `json:"store"`
	LastSeq uint64     `json:"lastSeq"`
	Events  []eventRow `json:"events"`
}

// run subscribes to the store's AuditWrites and, for each successful one
// while someone listens, reads the rows it wrote and publishes them.
// ready is closed once the subscription is live.
func (h *hub) run(ctx context.Context, nc *nats.Conn, kind string, st stores.Store, ready chan struct{}, log *slog.Logger) error {
	sub, err := projector.NewWriteSubscription(ctx, nc, projector.DefaultWritesPrefix, kind)
	close(ready)
	if err != nil {
		return fmt.Errorf("console: live updates: %w", err)
	}
	h.mu.Lock()
	h.live = true
	h.mu.Unlock()
	return sub.Run(ctx, func(w projector.AuditWrite) {
		if w.Error != "" || w.Count == 0 || h.listeners() == 0 {
			return
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		recs, err := st.History(rctx, stores.HistoryQuery{BeforeSeq: w.LastSeq + 1, Limit: min(w.Count, maxPage)})
		if err != nil {
			log.Warn("console: read the rows of a store write", "err", err)
			return
		}
		kept := recs[:0]
		for _, r := range recs {
			if r.Seq >= w.FirstSeq {
				kept = append(kept, r)
			}
		}
		b, err := json.Marshal(liveEvent{Store: w.Store, LastSeq: w.LastSeq, Events: eventRows(kept)})
		if err != nil {
			return
		}
		h.publish(b)
	})
}

// apiEvents streams Server-Sent Events: "execution" with the rows each
// store write added (JSON: no raw newline or markup can reach the page),
// and a comment every 15 s to keep proxies from closing the stream.
func (s *Server) apiEvents(w http.ResponseWriter, r *http.Request, _ who) {
	fl, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "internal", "streaming unsupported")
		return
	}
	ch := s.live.subscribe()
	defer s.live.unsubscribe(ch)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	s.live.mu.Lock()
	live := s.live.live
	s.live.mu.Unlock()
	status := "live"
	if !live {
		status = "not live: no NATS connection"
	}
	b, _ := json.Marshal(map[string]string{"status": status})
	fmt.Fprintf(w, "retry: 2000\nevent: hello\ndata: %s\n\n", b)
	fl.Flush()
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case msg := <-ch:
			fmt.Fprintf(w, "event: execution\ndata: %s\n\n", msg)
			fl.Flush()
		case <-keep.C:
			fmt.Fprint(w, ": keep-alive\n\n")
			fl.Flush()
		}
	}
}

// lagSample is the projector's lag at a moment.
type lagSample struct {
	At      time.Time
	Behind  uint64 // events on the stream not yet stored
	LastSeq uint64
}

// lagSamples keeps the last lagKeep samples for the lag view.
type lagSamples struct {
	mu sync.Mutex
	s  []lagSample
}

const lagKeep = 120

func (l *lagSamples) add(x lagSample) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.s = append(l.s, x)
	if len(l.s) > lagKeep {
		l.s = l.s[len(l.s)-lagKeep:]
	}
}

func (l *lagSamples) all() []lagSample {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]lagSample(nil), l.s...)
}

// sampleLag records the projector's lag every LagEvery until ctx ends.
func (s *Server) sampleLag(ctx context.Context) {
	t := time.NewTicker(s.cfg.LagEvery)
	defer t.Stop()
	for {
		s.sampleLagOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *Server) sampleLagOnce(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := inspect.LagOf(rctx, s.cfg.JS, s.cfg.Store, s.cfg.Stream, s.cfg.Consumer)
	if err != nil {
		s.log.Debug("console: lag sample", "err", err)
		return
	}
	s.addLagSample(l)
}

// addLagSample records a lag reading for the lag chart.
func (s *Server) addLagSample(l *inspect.Lag) {
	s.lag.add(lagSample{At: time.Now(), Behind: l.Pending + l.AckPending, LastSeq: l.StreamLastSeq})
}

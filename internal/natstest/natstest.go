// Package natstest starts real, in-process NATS JetStream servers for
// tests: one server (Start), or a cluster (StartCluster) whose nodes can
// be killed, restarted or shut down gracefully, for replicated streams
// and fail-over tests. Tests never mock NATS: what they check is what
// production runs.
package natstest

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/embedded"
)

// Server is a test server with one client connection.
type Server struct {
	*embedded.Server
	Conn *nats.Conn
	JS   jetstream.JetStream
}

// Start starts a JetStream server in t.TempDir() and connects to it. Both
// are closed when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, embedded.Config{})
}

// StartWith is Start with server settings (DataDir and Logger are filled
// in if empty).
func StartWith(t testing.TB, cfg embedded.Config) *Server {
	t.Helper()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = Logger(t)
	}
	s, err := embedded.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	srv := &Server{Server: s}
	srv.Conn, srv.JS = srv.Connect(t)
	return srv
}

// Connect opens another client connection, closed when the test ends; a
// test can close it earlier to simulate a crashed process.
func (s *Server) Connect(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := s.Server.Connect(t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// Logger routes slog output to t.Log until the test's cleanup has run;
// later lines (from goroutines still winding down) are dropped, since
// t.Log after a test ends panics.
func Logger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// LogCounts is a logger for t.Log that also counts records by message,
// for tests that assert how often something was retried or warned about.
type LogCounts struct {
	Logger *slog.Logger
	mu     sync.Mutex
	counts map[string]int
}

// CountingLogger returns a LogCounts logging to t.
func CountingLogger(t testing.TB) *LogCounts {
	lc := &LogCounts{counts: map[string]int{}}
	lc.Logger = slog.New(countingHandler{Handler: Logger(t).Handler(), lc: lc})
	return lc
}

// Count is how many records with message msg were logged.
func (lc *LogCounts) Count(msg string) int {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.counts[msg]
}

type countingHandler struct {
	slog.Handler
	lc *LogCounts
}

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	h.lc.mu.Lock()
	h.lc.counts[r.Message]++
	h.lc.mu.Unlock()
	return h.Handler.Handle(ctx, r)
}

func (h countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return countingHandler{Handler: h.Handler.WithAttrs(as), lc: h.lc}
}

func (h countingHandler) WithGroup(name string) slog.Handler {
	return countingHandler{Handler: h.Handler.WithGroup(name), lc: h.lc}
}

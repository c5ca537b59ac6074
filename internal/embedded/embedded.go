// Package embedded runs a NATS JetStream server inside the process, for the
// embedded default (no infrastructure to install) and for tests, which must
// use a real server rather than a mock of one.
//
// One process at a time serves a data directory: Start takes a lock file
// in it (auditflow.lock) and fails at once, naming the directory, if
// another process holds it or the directory cannot be created or written —
// two servers on one store would corrupt it, and the server itself would
// only time out.
package embedded

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Config configures an in-process server.
type Config struct {
	// DataDir holds JetStream's files. Required: the stream is the source
	// of truth, so it lives on disk even when embedded.
	DataDir string
	// SyncAlways makes the server fsync every write before acknowledging
	// it. An audit log wants this (an acknowledged event survives power
	// loss); it costs throughput. Default false keeps NATS's default
	// (fsync every 2 minutes; survives a process crash, not a power cut).
	SyncAlways bool
	// Port to listen on for other processes on 127.0.0.1; 0 means no
	// network listener (in-process connections only), -1 a random port.
	Port int
	// Logger receives server errors and warnings; nil discards them.
	Logger *slog.Logger
}

// Server is a running in-process NATS server.
type Server struct {
	*server.Server
	unlock func()
}

// Start starts a JetStream-enabled server and waits until it accepts
// connections.
func Start(cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("embedded: DataDir is required")
	}
	// Fail at once, naming the directory, where the server would only
	// time out: a data dir that cannot be created or written, or one
	// another process is serving (two servers on one store corrupt it).
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("embedded: data directory %s: %w (choose another with --data-dir, or fix its permissions)", cfg.DataDir, err)
	}
	unlock, err := lockDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName: "auditflow-embedded",
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		Host:       "127.0.0.1",
		Port:       cfg.Port,
		NoSigs:     true,
		SyncAlways: cfg.SyncAlways,
	}
	if cfg.Port == 0 {
		opts.DontListen = true
	}
	s, err := server.NewServer(opts)
	if err != nil {
		unlock()
		return nil, fmt.Errorf("embedded: %w", err)
	}
	if cfg.Logger != nil {
		s.SetLoggerV2(&logAdapter{cfg.Logger}, false, false, false)
	}
	go s.Start() // the Server owns this goroutine; Shutdown ends it
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		unlock()
		return nil, fmt.Errorf("embedded: NATS server on %s not ready after 30s", cfg.DataDir)
	}
	if !s.JetStreamEnabled() {
		s.Shutdown()
		s.WaitForShutdown()
		unlock()
		return nil, fmt.Errorf("embedded: JetStream did not start on %s (see the log above)", cfg.DataDir)
	}
	return &Server{Server: s, unlock: unlock}, nil
}

// Connect opens an in-process client connection (no TCP).
func (s *Server) Connect(name string, opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.InProcessServer(s.Server), nats.Name(name), nats.MaxReconnects(-1)}, opts...)
	return nats.Connect("", opts...)
}

// Close shuts the server down and waits for it.
func (s *Server) Close() {
	s.Shutdown()
	s.WaitForShutdown()
	if s.unlock != nil {
		s.unlock()
	}
}

// lockFile is the file in the data directory that one server at a time
// holds locked.
const lockFile = "auditflow.lock"

// lockDir takes the data directory's lock file, creating it: that also
// proves the directory writable. It fails at once if another process
// holds it.
func lockDir(dir string) (func(), error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("embedded: data directory %s is not writable: %w (choose another with --data-dir, or fix its permissions)", dir, err)
	}
	if err := tryLock(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("embedded: data directory %s is in use by another process (a runner --embedded, or auditflow, still running?): %w", dir, err)
	}
	return func() { _ = f.Close() }, nil // closing releases the lock
}

type logAdapter struct{ l *slog.Logger }

func (a *logAdapter) Noticef(string, ...any) {}
func (a *logAdapter) Tracef(string, ...any)  {}
func (a *logAdapter) Debugf(string, ...any)  {}
func (a *logAdapter) Warnf(f string, v ...any) {
	a.l.Warn("nats-server: " + fmt.Sprintf(f, v...))
}
func (a *logAdapter) Errorf(f string, v ...any) {
	a.l.Error("nats-server: " + fmt.Sprintf(f, v...))
}
func (a *logAdapter) Fatalf(f string, v ...any) {
	a.l.Error("nats-server fatal: " + fmt.Sprintf(f, v...))
}

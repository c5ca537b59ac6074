// Package embedded runs a NATS JetStream server inside the process, for the
// embedded default (no infrastructure to install) and for tests, which must
// use a real server rather than a mock of one.
package embedded

import (
	"errors"
	"fmt"
	"log/slog"
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
}

// Start starts a JetStream-enabled server and waits until it accepts
// connections.
func Start(cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("embedded: DataDir is required")
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
		return nil, fmt.Errorf("embedded: %w", err)
	}
	if cfg.Logger != nil {
		s.SetLoggerV2(&logAdapter{cfg.Logger}, false, false, false)
	}
	go s.Start() // the Server owns this goroutine; Shutdown ends it
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, errors.New("embedded: NATS server not ready after 30s")
	}
	return &Server{s}, nil
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

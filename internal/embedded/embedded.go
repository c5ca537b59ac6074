// Package embedded runs a NATS JetStream server inside the process, for the
// embedded default (no infrastructure to install) and for tests, which must
// use a real server rather than a mock of one.
//
// One process at a time serves a data directory: Start takes a lock file
// in it (auditflow.lock) and fails at once, naming the directory, if
// another process holds it or the directory cannot be created or written —
// two servers on one store would corrupt it, and the server itself would
// only time out.
//
// With Config.Share the serving process also listens on 127.0.0.1 with a
// random token, written with its URL to server.json in the directory
// (mode 0600, so only its owner can read it), and a second process's Start
// joins that server instead of failing: the console opened after the
// quickstart and a runner run beside it share one stream, and the console
// sees the runner's executions live.
package embedded

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
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
	// Share serves other processes of this machine's user: the server
	// listens on a random 127.0.0.1 port (or Port) and requires a random
	// token, both written to server.json in DataDir while it runs. If
	// another process already serves DataDir with Share, Start joins its
	// server instead of failing: that process's settings (SyncAlways)
	// apply, and the joined connections end when it exits.
	Share bool
}

// Server is a running in-process NATS server, or (Joined) a connection
// point to the one another process serves on the same data directory.
type Server struct {
	*server.Server // nil when joined
	unlock         func()
	url, token     string // set when shared or joined
	info           string // server.json, removed by Close when this process serves
}

// infoFile, in the data directory, tells other processes how to reach a
// shared server.
const infoFile = "server.json"

type serverInfo struct {
	URL   string `json:"url"`
	Token string `json:"token"`
	PID   int    `json:"pid"`
}

// Joined reports whether s is another process's server.
func (s *Server) Joined() bool { return s.Server == nil }

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
	if errors.Is(err, errInUse) && cfg.Share {
		return join(cfg.DataDir, err)
	}
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
	var token string
	switch {
	case cfg.Share:
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		token = hex.EncodeToString(b)
		opts.Authorization = token
		if cfg.Port == 0 {
			opts.Port = -1
		}
	case cfg.Port == 0:
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
	srv := &Server{Server: s, unlock: unlock, token: token}
	if cfg.Share {
		srv.url, srv.info = s.ClientURL(), filepath.Join(cfg.DataDir, infoFile)
		if err := writeInfo(srv.info, serverInfo{URL: srv.url, Token: token, PID: os.Getpid()}); err != nil {
			srv.Close()
			return nil, fmt.Errorf("embedded: sharing the server: %w", err)
		}
	}
	return srv, nil
}

// writeInfo writes the shared server's address and token, readable by
// this user only, replacing what a process that died left.
func writeInfo(path string, info serverInfo) error {
	b, err := json.Marshal(info)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// joinWait bounds how long a joining process waits for the serving one to
// publish its address (it may be starting).
const joinWait = 5 * time.Second

// join returns the server another process serves on dir with Share, or
// inUse (why this process cannot serve dir) if there is none to join.
func join(dir string, inUse error) (*Server, error) {
	deadline := time.Now().Add(joinWait)
	for {
		b, err := os.ReadFile(filepath.Join(dir, infoFile))
		var info serverInfo
		if err == nil && json.Unmarshal(b, &info) == nil && info.URL != "" {
			// Check it answers before handing it out.
			nc, cerr := nats.Connect(info.URL, nats.Token(info.Token), nats.Timeout(2*time.Second), nats.NoReconnect())
			if cerr == nil {
				nc.Close()
				return &Server{url: info.URL, token: info.Token}, nil
			}
			err = cerr
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("no usable address in " + infoFile)
			}
			return nil, fmt.Errorf("%w; and its server could not be joined: %v", inUse, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Connect opens a client connection: in-process (no TCP) to this
// process's server, or over 127.0.0.1 to the one it joined. A joined
// connection gives up a minute after that server goes away.
func (s *Server) Connect(name string, opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{nats.Name(name)}
	if s.token != "" {
		base = append(base, nats.Token(s.token))
	}
	if s.Joined() {
		opts = append(append(base, nats.MaxReconnects(30), nats.ReconnectWait(2*time.Second)), opts...)
		return nats.Connect(s.url, opts...)
	}
	opts = append(append(base, nats.InProcessServer(s.Server), nats.MaxReconnects(-1)), opts...)
	return nats.Connect("", opts...)
}

// Close shuts the server down and waits for it; for a joined server it
// does nothing (the serving process owns it).
func (s *Server) Close() {
	if s.Joined() {
		return
	}
	if s.info != "" {
		_ = os.Remove(s.info) // first, so no process joins a server going away
	}
	s.Shutdown()
	s.WaitForShutdown()
	if s.unlock != nil {
		s.unlock()
	}
}

// errInUse: another process serves the data directory.
var errInUse = errors.New("in use")

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
		return nil, fmt.Errorf("embedded: data directory %s is %w by another process (a runner --embedded, or auditflow, still running?): %w", dir, errInUse, err)
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

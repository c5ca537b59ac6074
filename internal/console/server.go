package console

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/stores"
)

// ErrInvalidConfig: the console's configuration is incomplete or contradictory.
var ErrInvalidConfig = errors.New("console: invalid config")

// Locks lists the pipeline locks held now (*lock.Locker does).
type Locks interface {
	List(ctx context.Context) ([]lock.Info, error)
}

// Config is what the console reads and how it lets people in.
type Config struct {
	// Store is the audit store shown. Required; the console only reads it.
	Store stores.Store
	// StoreKind names the store's projector (sqlite, mongo, …): its
	// AuditWrite subject audit.writes.<kind> and, with Consumer empty, its
	// durable consumer projector-<kind>. Required.
	StoreKind string
	// Consumer is the projector's durable consumer on Stream, for lag.
	Consumer string
	// Stream is the audit stream's name (default AUDIT).
	Stream string
	// NC and JS reach NATS: the AuditWrite subscription (live updates),
	// lag, write latency and dead letters. Without them the pages are not
	// live and those sections say so.
	NC *nats.Conn
	JS jetstream.JetStream
	// Locks lists the pipeline locks; nil shows none, saying why.
	Locks Locks
	// Keys are the API keys let in. Required unless NoAuth or KeysFile.
	Keys []Key
	// KeysFile, if set, is where Keys came from: Run reloads it within a
	// second of a change (its size or modification time), and ReloadKeys
	// on demand (the command calls it on SIGHUP), so a key made or revoked
	// while the console runs counts at once. A file that no longer loads
	// keeps the keys in force, logged. With Keys empty, New loads it.
	KeysFile string
	// NoAuth lets everyone in with the read role: for a console on the
	// loopback interface of a developer's machine only (the caller checks
	// the address).
	NoAuth bool
	// SecureCookies marks the session cookie Secure: set it when serving
	// TLS, or behind a proxy that terminates it.
	SecureCookies bool
	// StaleAfter: an execution started this long ago without an end is
	// shown as UNCERTAIN (default stores.DefaultStaleAfter).
	StaleAfter time.Duration
	// LagEvery is how often the lag view samples the projector's lag
	// (default 5s).
	LagEvery time.Duration
	Logger   *slog.Logger
}

func (c *Config) validate() error {
	switch {
	case c.Store == nil:
		return fmt.Errorf("%w: no store", ErrInvalidConfig)
	case c.StoreKind == "":
		return fmt.Errorf("%w: no store kind", ErrInvalidConfig)
	case len(c.Keys) == 0 && c.KeysFile == "" && !c.NoAuth:
		return fmt.Errorf("%w: no API keys (give a keys file, or --insecure-no-auth on a loopback address)", ErrInvalidConfig)
	case (c.NC == nil) != (c.JS == nil):
		return fmt.Errorf("%w: give both a NATS connection and its JetStream context, or neither", ErrInvalidConfig)
	}
	return nil
}

func (c *Config) withDefaults() {
	if c.Stream == "" {
		c.Stream = "AUDIT"
	}
	if c.Consumer == "" {
		c.Consumer = "projector-" + c.StoreKind
	}
	if c.StaleAfter <= 0 {
		c.StaleAfter = stores.DefaultStaleAfter
	}
	if c.LagEvery <= 0 {
		c.LagEvery = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Server is the console: an http.Handler, and the workers behind its live
// updates and lag samples (Run).
type Server struct {
	cfg      Config
	log      *slog.Logger
	mux      *http.ServeMux
	live     *hub
	lag      *lagSamples
	sessions sessions
	pages    *pages
	keys     atomic.Pointer[[]Key]
	keysSeen keysStamp // KeysFile's size and mtime when last loaded; Run's poller owns it
}

// New checks cfg and builds the console.
func New(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.withDefaults()
	p, err := loadPages()
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), live: newHub(), lag: &lagSamples{},
		sessions: sessions{m: map[string]session{}}, pages: p}
	keys := cfg.Keys
	if cfg.KeysFile != "" {
		s.keysSeen = stampOf(cfg.KeysFile)
		if len(keys) == 0 && !cfg.NoAuth {
			if keys, err = LoadKeys(cfg.KeysFile); err != nil {
				return nil, err
			}
		}
	}
	s.keys.Store(&keys)
	s.routes()
	return s, nil
}

// Handler serves the console: API, pages and assets, behind the secure
// headers and the access check.
func (s *Server) Handler() http.Handler { return s.secureHeaders(s.mux) }

// Run serves on ln (with TLS when tlsConfig is set) and runs the live
// updates and lag samples until ctx is cancelled, then shuts down
// gracefully. It returns nil on cancellation.
func (s *Server) Run(ctx context.Context, ln net.Listener, tlsConfig *tls.Config) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn), BaseContext: func(net.Listener) context.Context { return ctx }}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Go(func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	})
	if s.cfg.NC != nil {
		ready := make(chan struct{})
		wg.Go(func() {
			if err := s.live.run(ctx, s.cfg.NC, s.cfg.StoreKind, s.cfg.Store, ready, s.log); err != nil {
				errc <- err
			}
		})
		select {
		case <-ready:
		case <-ctx.Done():
		}
		wg.Go(func() { s.sampleLag(ctx) })
	}
	if s.cfg.KeysFile != "" && !s.cfg.NoAuth {
		wg.Go(func() { s.watchKeys(ctx) })
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = hs.Shutdown(sctx)
	wg.Wait()
	return err
}

func (s *Server) secureHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		if r.TLS != nil {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		next.ServeHTTP(w, r)
	})
}

// who is the key (or session) a request came with.
type who struct {
	Name string
	Role Role
}

const sessionCookie = "auditflow_console"

// authenticate finds the request's key: a bearer token, or a session
// cookie set by the login form.
func (s *Server) authenticate(r *http.Request) (who, bool) {
	if s.cfg.NoAuth {
		return who{Name: "anyone (--insecure-no-auth)", Role: RoleRead}, true
	}
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return who{}, false
		}
		k, ok := match(*s.keys.Load(), strings.TrimSpace(tok))
		return who{Name: k.Name, Role: k.Role}, ok
	}
	if c, err := r.Cookie(sessionCookie); err == nil {
		return s.sessions.get(c.Value)
	}
	return who{}, false
}

// api wraps an API handler: 401 without a valid key, 403 when its role
// lacks need. Keys are never logged, only their names.
func (s *Server) api(need permission, h func(w http.ResponseWriter, r *http.Request, u who)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		u, ok := s.authenticate(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="auditflow console"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", s.unauthorized(r))
			return
		}
		if !u.Role.allows(need) {
			writeError(w, http.StatusForbidden, "forbidden", fmt.Sprintf("key %q has role %q, which may not read %s", u.Name, u.Role, r.URL.Path))
			return
		}
		s.log.Debug("console api", "path", r.URL.Path, "key", u.Name)
		h(w, r, u)
	}
}

// page wraps a page handler: without a session it sends the browser to
// the login form, and a key without the read role gets 403.
func (s *Server) page(h func(w http.ResponseWriter, r *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		u, ok := s.authenticate(r)
		if !ok {
			http.Redirect(w, r, "/login?next="+urlQueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		if !u.Role.allows(permRead) {
			s.renderStatus(w, http.StatusForbidden, fmt.Sprintf("key %q has role %q, which may not read the audit", u.Name, u.Role))
			return
		}
		h(w, r)
	}
}

type session struct {
	who
	expires time.Time
}

// sessions are the browsers logged in with a key, by random id. They live
// in memory: a restarted console asks for the key again.
type sessions struct {
	mu sync.Mutex
	m  map[string]session
}

const sessionTTL = 12 * time.Hour

func (ss *sessions) add(u who) (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	id := hex.EncodeToString(b)
	now := time.Now()
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for k, v := range ss.m {
		if now.After(v.expires) {
			delete(ss.m, k)
		}
	}
	ss.m[id] = session{who: u, expires: now.Add(sessionTTL)}
	return id, nil
}

func (ss *sessions) get(id string) (who, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	v, ok := ss.m[id]
	if !ok || time.Now().After(v.expires) {
		return who{}, false
	}
	return v.who, true
}

func (ss *sessions) remove(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, id)
}

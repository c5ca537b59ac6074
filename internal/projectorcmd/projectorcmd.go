// Package projectorcmd is the projector command: flags, store selection and
// wiring. It lives in a package, not in main, so it can be tested.
package projectorcmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/auditflow/auditflow/internal/buildinfo"
	"github.com/auditflow/auditflow/internal/logging"
	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/internal/redact"
	"github.com/auditflow/auditflow/internal/storeflags"
	"github.com/auditflow/auditflow/internal/trustflags"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
	// ExitStoreBehind: refused to consume into a store that lacks events
	// the consumer has acknowledged (a new or lost store); the message
	// says what to do, e.g. start once with --rebuild.
	ExitStoreBehind = 5
)

// DefaultMetricsAddr is where /metrics, /healthz and /readyz are served
// unless --metrics-addr says otherwise: the loopback interface only (safe
// by default: a projector started on a host does not expose its metrics
// to the network), on the port application exporters conventionally use
// (OpenTelemetry's Prometheus exporter default). A container, scraped and
// probed from outside, sets AUDITFLOW_METRICS_ADDR=":9464".
const DefaultMetricsAddr = "127.0.0.1:9464"

// DefaultOpenTimeout bounds opening the store at start: a store that
// cannot be reached ends the process (exit 1) for its supervisor to
// restart, rather than hanging.
const DefaultOpenTimeout = 30 * time.Second

type options struct {
	nats            natsconn.Config
	store           storeflags.Config
	replicas        int
	consumer        string
	workers         int
	batch           int
	ackWait         time.Duration
	writeTimeout    time.Duration
	stallAfter      time.Duration
	shutdownTimeout time.Duration
	openTimeout     time.Duration
	rebuild         bool
	metricsAddr     string
	sig             trustflags.Config
	logLevel        string
	logFormat       string
}

// errVersion: --version was asked for.
var errVersion = errors.New("version")

func parse(args []string, stdout, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("projector", flag.ContinueOnError)
	fs.SetOutput(stderr)
	// -h prints the usage on stdout (it is what was asked for); a bad flag
	// gets its error and a pointer to -h on stderr.
	fs.Usage = func() {}
	usageText := func() {
		fs.SetOutput(stdout)
		defer fs.SetOutput(stderr)
		fmt.Fprint(stdout, `Usage: projector --store sqlite|mongo|dynamodb|couchbase [flags]

Consumes the audit stream into an audit store until SIGINT/SIGTERM.
Only the selected store's flags matter.

Exit codes: 0 stopped, 1 error, 2 bad usage/config, 5 the store is behind
its consumer (new or lost: --rebuild fills it from the stream).

Examples:
  projector --store sqlite --sqlite-path /var/lib/auditflow/audit.db
  projector --store mongo --mongo-uri-file /run/secrets/mongo-uri --metrics-addr :9090
  projector --store sqlite --sqlite-path audit.db --rebuild     # a lost store, rebuilt from the stream

Flags:
`)
		fs.PrintDefaults()
	}
	var version bool
	fs.BoolVar(&version, "version", false, "print the version, commit and Go version, and exit")
	env := natsconn.Env
	o.nats.RegisterFlags(fs)
	o.sig.RegisterTrustFlag(fs)
	o.store.RegisterFlags(fs)
	fs.IntVar(&o.replicas, "stream-replicas", 1, "replicas of the audit streams when creating them")
	fs.StringVar(&o.consumer, "consumer", env("AUDITFLOW_CONSUMER", ""), "durable consumer name, shared by all workers of one store (default projector-<store>) [AUDITFLOW_CONSUMER]")
	fs.IntVar(&o.workers, "workers", projector.DefaultWorkers, "concurrent fetch-apply-ack loops")
	fs.IntVar(&o.batch, "batch", projector.DefaultBatchSize, "most events per store write")
	var envErrs []error
	duration := func(p *time.Duration, name, env string, def time.Duration, usage string) {
		if v, ok := os.LookupEnv(env); ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				envErrs = append(envErrs, fmt.Errorf("%s (--%s): %w", env, name, err))
			} else {
				def = d
			}
		}
		fs.DurationVar(p, name, def, usage+" ["+env+"]")
	}
	duration(&o.ackWait, "ack-wait", "AUDITFLOW_ACK_WAIT", projector.DefaultAckWait,
		"how long NATS waits for an acknowledgement before redelivering; what the projector holds is kept alive every ack-wait/4, so this only bounds how soon a crashed projector's messages come back (at least 1s)")
	duration(&o.writeTimeout, "write-timeout", "AUDITFLOW_WRITE_TIMEOUT", 0,
		"bound on each store write attempt, below --ack-wait; a timed-out write is retried in halves (0: half of --ack-wait)")
	duration(&o.stallAfter, "stall-after", "AUDITFLOW_STALL_AFTER", projector.DefaultStallAfter,
		"/readyz fails when nothing was stored or acknowledged for this long while events are pending, or one store write has failed for this long")
	duration(&o.shutdownTimeout, "shutdown-timeout", "AUDITFLOW_SHUTDOWN_TIMEOUT", projector.DefaultShutdownTimeout,
		"on SIGINT/SIGTERM, how long to keep trying to store the batches in flight before handing them back to NATS for another projector")
	duration(&o.openTimeout, "open-timeout", "AUDITFLOW_OPEN_TIMEOUT", DefaultOpenTimeout,
		"how long to try opening the audit store and setting up on NATS at start before exiting 1; /healthz and /readyz answer meanwhile (readyz: 503, naming the step)")
	fs.BoolVar(&o.rebuild, "rebuild", false,
		"if the store has no progress for the consumer while the consumer has acknowledged events (a new or lost store), replay the stream into it before consuming; without it the projector refuses such a store (exit 5). An interrupted rebuild resumes; on a store that is up to date it does nothing")
	fs.StringVar(&o.metricsAddr, "metrics-addr", env("AUDITFLOW_METRICS_ADDR", DefaultMetricsAddr), "host:port serving /metrics, /healthz and /readyz; empty disables [AUDITFLOW_METRICS_ADDR]")
	fs.StringVar(&o.logLevel, "log-level", env("AUDITFLOW_LOG_LEVEL", "info"), "debug, info, warn or error [AUDITFLOW_LOG_LEVEL]")
	fs.StringVar(&o.logFormat, "log-format", env("AUDITFLOW_LOG_FORMAT", "text"), "text or json [AUDITFLOW_LOG_FORMAT]")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		usageText()
		return nil, err
	} else if err != nil {
		return nil, fmt.Errorf("%w (projector -h shows the flags)", err)
	}
	if version {
		return nil, errVersion
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if len(envErrs) > 0 {
		return nil, envErrs[0]
	}
	if err := o.store.Validate(); err != nil {
		return nil, err
	}
	if err := o.sig.Require(false); err != nil {
		return nil, err
	}
	switch {
	case o.ackWait < time.Second:
		return nil, fmt.Errorf("--ack-wait %s: must be at least 1s", o.ackWait)
	case o.writeTimeout < 0 || o.writeTimeout >= o.ackWait:
		return nil, fmt.Errorf("--write-timeout %s: must be below --ack-wait (%s), or 0 for half of it", o.writeTimeout, o.ackWait)
	case o.stallAfter <= 0:
		return nil, fmt.Errorf("--stall-after %s: must be positive", o.stallAfter)
	case o.shutdownTimeout <= 0:
		return nil, fmt.Errorf("--shutdown-timeout %s: must be positive", o.shutdownTimeout)
	case o.openTimeout <= 0:
		return nil, fmt.Errorf("--open-timeout %s: must be positive", o.openTimeout)
	}
	if o.metricsAddr != "" {
		if _, _, err := net.SplitHostPort(o.metricsAddr); err != nil {
			return nil, fmt.Errorf("--metrics-addr: %w (want host:port or :port, or empty to disable)", err)
		}
	}
	return o, nil
}

// CheckArgs reports whether args are valid projector flags with a valid
// store configuration, without connecting to anything (for deployment
// files' tests).
func CheckArgs(args []string) error {
	_, err := parse(args, io.Discard, io.Discard)
	return err
}

// Main runs the command and returns its exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if errors.Is(err, errVersion) {
		fmt.Fprintln(stdout, buildinfo.Line("projector"))
		return ExitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "projector:", err)
		return ExitUsage
	}
	// Errors and logs are masked with the projector's own secrets, whatever
	// a client library puts in them.
	stderr = redact.NewMasker(append(o.store.Secrets(), o.nats.Secrets()...)...).RecordWriter(stderr)
	log, err := logging.New(stderr, o.logLevel, o.logFormat)
	if err != nil {
		fmt.Fprintln(stderr, "projector:", err)
		return ExitUsage
	}
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := run(ctx, o, log)
		done <- result{code, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		// Shutdown honours its timeout: past it (and a margin for the
		// final checkpoint and closing), the process stops anyway. What
		// is unacknowledged goes back to NATS and is stored again, which
		// changes nothing.
		t := time.NewTimer(o.shutdownTimeout + shutdownMargin)
		defer t.Stop()
		select {
		case r = <-done:
		case <-t.C:
			log.Error("did not stop within --shutdown-timeout and its margin: exiting; what was in flight goes back to NATS for redelivery",
				"shutdownTimeout", o.shutdownTimeout, "margin", shutdownMargin)
			return ExitError
		}
	}
	if r.err != nil {
		log.Error("projector failed", "err", r.err)
		return r.code
	}
	return ExitOK
}

// shutdownMargin is how long past --shutdown-timeout a stopping projector
// may take to record its final checkpoint and close its connections.
const shutdownMargin = 2 * time.Second

func run(ctx context.Context, o *options, log *slog.Logger) (int, error) {
	list, err := o.sig.List()
	if err != nil {
		return ExitUsage, err
	}
	if o.sig.Unchecked() {
		log.Warn("running without a trust list (--insecure-no-trust): signatures are not checked, every event is stored as believed")
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "auditflow_projector_trust_checks_disabled",
		Help: "1 if the projector runs without a trust list (--insecure-no-trust): every event is believed, signed or not; else 0.",
	}, func() float64 {
		if o.sig.Unchecked() {
			return 1
		}
		return 0
	}))
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := buildinfo.Register(reg); err != nil {
		return ExitError, err
	}
	// Serve first: a taken port is reported before anything is opened, and
	// probes get an answer while the store and NATS are being opened —
	// /readyz a 503 naming the step — instead of a hung connection.
	h := &startingHandler{metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{})}
	h.step("opening the audit store " + o.store.Describe())
	if o.metricsAddr != "" {
		ln, err := net.Listen("tcp", o.metricsAddr)
		if errors.Is(err, syscall.EADDRINUSE) {
			return ExitError, fmt.Errorf("--metrics-addr %s: the address is already in use (another projector on this host?): "+
				"give another port (--metrics-addr 127.0.0.1:9465), a free one chosen at start (--metrics-addr 127.0.0.1:0), "+
				"or an empty --metrics-addr to serve no metrics or probes: %w", o.metricsAddr, err)
		}
		if err != nil {
			return ExitError, fmt.Errorf("--metrics-addr %s: %w", o.metricsAddr, err)
		}
		// Stopped after Run returns: the final batch's metrics can still
		// be scraped, and probes see "shutting down" meanwhile.
		defer serve(ln, h, log)()
	}
	log.Info("opening audit store", "store", o.store.Describe(), "timeout", o.openTimeout)
	octx, cancel := context.WithTimeout(ctx, o.openTimeout)
	defer cancel()
	store, closeStore, err := openStore(octx, o, log)
	if err != nil {
		return exitFor(err), err
	}
	defer closeStore()
	h.step("connecting to NATS")
	o.nats.Name = "auditflow-projector-" + o.store.Kind
	o.nats.Role = natsconn.RoleProjector
	nc, err := natsconn.Connect(o.nats, log)
	if err != nil {
		return exitFor(err), err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return ExitError, err
	}
	h.step("setting up the consumer, re-driving parked events and catching up the store")
	p, err := projector.New(ctx, js, store, projector.Config{
		Stream: producer.StreamConfig{Replicas: o.replicas}, StoreName: o.store.Kind, Consumer: o.consumer,
		Workers: o.workers, BatchSize: o.batch, AckWait: o.ackWait, WriteTimeout: o.writeTimeout,
		StallAfter: o.stallAfter, ShutdownTimeout: o.shutdownTimeout, Rebuild: o.rebuild, Trust: list, Registerer: reg, Logger: log,
	})
	if err != nil {
		return exitFor(err), err
	}
	h.ready(p.Handler(reg))
	return ExitOK, p.Run(ctx)
}

// openStore opens the store within ctx's deadline, even if its client
// does not honour ctx (the open goes on in the background; the process is
// about to exit anyway).
func openStore(ctx context.Context, o *options, log *slog.Logger) (stores.Store, func(), error) {
	type opened struct {
		s     stores.Store
		close func()
		err   error
	}
	done := make(chan opened, 1)
	go func() {
		s, c, err := o.store.Open(ctx, log)
		done <- opened{s, c, err}
	}()
	select {
	case r := <-done:
		if r.err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, nil, fmt.Errorf("opening the audit store %s: not done within --open-timeout %s (is it reachable?): %w", o.store.Describe(), o.openTimeout, r.err)
		}
		return r.s, r.close, r.err
	case <-ctx.Done():
		go func() { // close it if it opens after all
			if r := <-done; r.err == nil {
				r.close()
			}
		}()
		return nil, nil, fmt.Errorf("opening the audit store %s: not done within --open-timeout %s (is it reachable?): %w", o.store.Describe(), o.openTimeout, context.Cause(ctx))
	}
}

// startingHandler answers probes while the projector starts, then hands
// every request to the projector's own handler.
type startingHandler struct {
	metrics http.Handler
	since   time.Time
	what    atomic.Pointer[string]
	next    atomic.Pointer[http.Handler]
}

func (h *startingHandler) step(what string) {
	if h.since.IsZero() {
		h.since = time.Now()
	}
	h.what.Store(&what)
}

func (h *startingHandler) ready(next http.Handler) { h.next.Store(&next) }

func (h *startingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if next := h.next.Load(); next != nil {
		(*next).ServeHTTP(w, r)
		return
	}
	switch {
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	case r.URL.Path == "/healthz":
		fmt.Fprintln(w, "ok (starting)")
	case r.URL.Path == "/readyz":
		http.Error(w, fmt.Sprintf("%s: starting: %s (for %s)", projector.ErrNotReady, *h.what.Load(), time.Since(h.since).Round(time.Second)),
			http.StatusServiceUnavailable)
	case r.URL.Path == "/metrics":
		h.metrics.ServeHTTP(w, r)
	default:
		http.NotFound(w, r)
	}
}

// serve serves h on ln until the returned function is called; that
// function shuts the server down, giving requests in flight a few seconds,
// and waits for it.
func serve(ln net.Listener, h http.Handler, log *slog.Logger) (stop func()) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	log.Info("serving metrics and health checks", "addr", ln.Addr().String())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			// The projector goes on: metrics are worth less than the audit.
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}
}

func exitFor(err error) int {
	if errors.Is(err, projector.ErrStoreBehind) {
		return ExitStoreBehind
	}
	if errors.Is(err, stores.ErrInvalidConfig) || errors.Is(err, projector.ErrInvalidConfig) ||
		errors.Is(err, producer.ErrInvalidConfig) || errors.Is(err, producer.ErrStreamMismatch) ||
		errors.Is(err, natsconn.ErrInvalidConfig) || errors.Is(err, trustflags.ErrInvalid) {
		return ExitUsage
	}
	return ExitError
}

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
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/auditflow/auditflow/internal/logging"
	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/internal/storeflags"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// DefaultMetricsAddr is where /metrics, /healthz and /readyz are served
// unless --metrics-addr says otherwise: every interface, since containers
// are scraped and probed from outside, on the port application exporters
// conventionally use (OpenTelemetry's Prometheus exporter default).
const DefaultMetricsAddr = ":9464"

type options struct {
	nats        natsconn.Config
	store       storeflags.Config
	replicas    int
	consumer    string
	workers     int
	batch       int
	metricsAddr string
	logLevel    string
	logFormat   string
}

func parse(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("projector", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: projector --store sqlite|mongo|dynamodb|couchbase [flags]\n\nConsumes the audit stream into an audit store until SIGINT/SIGTERM.\nOnly the selected store's flags matter.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	env := natsconn.Env
	o.nats.RegisterFlags(fs)
	o.store.RegisterFlags(fs)
	fs.IntVar(&o.replicas, "stream-replicas", 1, "replicas of the audit streams when creating them")
	fs.StringVar(&o.consumer, "consumer", env("AUDITFLOW_CONSUMER", ""), "durable consumer name, shared by all workers of one store (default projector-<store>) [AUDITFLOW_CONSUMER]")
	fs.IntVar(&o.workers, "workers", projector.DefaultWorkers, "concurrent fetch-apply-ack loops")
	fs.IntVar(&o.batch, "batch", projector.DefaultBatchSize, "most events per store write")
	fs.StringVar(&o.metricsAddr, "metrics-addr", env("AUDITFLOW_METRICS_ADDR", DefaultMetricsAddr), "host:port serving /metrics, /healthz and /readyz; empty disables [AUDITFLOW_METRICS_ADDR]")
	fs.StringVar(&o.logLevel, "log-level", env("AUDITFLOW_LOG_LEVEL", "info"), "debug, info, warn or error [AUDITFLOW_LOG_LEVEL]")
	fs.StringVar(&o.logFormat, "log-format", env("AUDITFLOW_LOG_FORMAT", "text"), "text or json [AUDITFLOW_LOG_FORMAT]")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err := o.store.Validate(); err != nil {
		return nil, err
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
	_, err := parse(args, io.Discard)
	return err
}

// Main runs the command and returns its exit code.
func Main(ctx context.Context, args []string, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "projector:", err)
		return ExitUsage
	}
	log, err := logging.New(stderr, o.logLevel, o.logFormat)
	if err != nil {
		fmt.Fprintln(stderr, "projector:", err)
		return ExitUsage
	}
	if code, err := run(ctx, o, log); err != nil {
		log.Error("projector failed", "err", err)
		return code
	}
	return ExitOK
}

func run(ctx context.Context, o *options, log *slog.Logger) (int, error) {
	// Listen first: a taken port is reported before anything is opened.
	// Probes that connect while the store and NATS are being opened wait
	// in the listen backlog until the projector exists to answer them.
	var ln net.Listener
	if o.metricsAddr != "" {
		var err error
		if ln, err = net.Listen("tcp", o.metricsAddr); err != nil {
			return ExitError, fmt.Errorf("--metrics-addr: %w", err)
		}
		defer ln.Close()
	}
	log.Info("opening audit store", "store", o.store.Describe())
	store, closeStore, err := o.store.Open(ctx, log)
	if err != nil {
		return exitFor(err), err
	}
	defer closeStore()
	o.nats.Name = "auditflow-projector-" + o.store.Kind
	nc, err := natsconn.Connect(o.nats, log)
	if err != nil {
		return ExitError, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return ExitError, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	p, err := projector.New(ctx, js, store, projector.Config{
		Stream: producer.StreamConfig{Replicas: o.replicas}, StoreName: o.store.Kind, Consumer: o.consumer,
		Workers: o.workers, BatchSize: o.batch, Registerer: reg, Logger: log,
	})
	if err != nil {
		return exitFor(err), err
	}
	if ln != nil {
		// Stopped after Run returns: the final batch's metrics can still
		// be scraped, and probes see "shutting down" meanwhile.
		defer serve(ln, p.Handler(reg), log)()
	}
	return ExitOK, p.Run(ctx)
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
	if errors.Is(err, stores.ErrInvalidConfig) || errors.Is(err, projector.ErrInvalidConfig) ||
		errors.Is(err, producer.ErrInvalidConfig) || errors.Is(err, producer.ErrStreamMismatch) {
		return ExitUsage
	}
	return ExitError
}

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

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/logging"
	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

type options struct {
	nats      natsconn.Config
	store     string
	replicas  int
	consumer  string
	workers   int
	batch     int
	logLevel  string
	logFormat string
	sqlite    struct {
		path                        string
		changeLog, issues, checkpts string
	}
}

func parse(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("projector", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: projector --store sqlite [flags]\n\nConsumes the audit stream into an audit store until SIGINT/SIGTERM.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	env := natsconn.Env
	o.nats.RegisterFlags(fs)
	fs.StringVar(&o.store, "store", env("AUDITFLOW_STORE", "sqlite"), "audit store: sqlite [AUDITFLOW_STORE]")
	fs.IntVar(&o.replicas, "stream-replicas", 1, "replicas of the audit streams when creating them")
	fs.StringVar(&o.consumer, "consumer", env("AUDITFLOW_CONSUMER", ""), "durable consumer name, shared by all workers of one store (default projector-<store>) [AUDITFLOW_CONSUMER]")
	fs.IntVar(&o.workers, "workers", projector.DefaultWorkers, "concurrent fetch-apply-ack loops")
	fs.IntVar(&o.batch, "batch", projector.DefaultBatchSize, "most events per store write")
	fs.StringVar(&o.logLevel, "log-level", env("AUDITFLOW_LOG_LEVEL", "info"), "debug, info, warn or error [AUDITFLOW_LOG_LEVEL]")
	fs.StringVar(&o.logFormat, "log-format", env("AUDITFLOW_LOG_FORMAT", "text"), "text or json [AUDITFLOW_LOG_FORMAT]")
	fs.StringVar(&o.sqlite.path, "sqlite-path", env("AUDITFLOW_SQLITE_PATH", "auditflow.db"), "SQLite database file [AUDITFLOW_SQLITE_PATH]")
	fs.StringVar(&o.sqlite.changeLog, "sqlite-changelog-table", sqlitestore.DefaultChangeLogTable, "SQLite changeLog table")
	fs.StringVar(&o.sqlite.issues, "sqlite-issues-table", sqlitestore.DefaultIssuesTable, "SQLite issues table")
	fs.StringVar(&o.sqlite.checkpts, "sqlite-checkpoints-table", sqlitestore.DefaultCheckpointsTable, "SQLite checkpoints table")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return o, nil
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

func openStore(ctx context.Context, o *options) (stores.Store, error) {
	switch o.store {
	case "sqlite":
		return sqlitestore.Open(ctx, o.sqlite.path, sqlitestore.Config{
			ChangeLogTable: o.sqlite.changeLog, IssuesTable: o.sqlite.issues, CheckpointsTable: o.sqlite.checkpts})
	}
	return nil, fmt.Errorf("%w: --store %q: want sqlite", stores.ErrInvalidConfig, o.store)
}

func run(ctx context.Context, o *options, log *slog.Logger) (int, error) {
	store, err := openStore(ctx, o)
	if err != nil {
		return exitFor(err), err
	}
	defer store.Close()
	o.nats.Name = "auditflow-projector-" + o.store
	nc, err := natsconn.Connect(o.nats, log)
	if err != nil {
		return ExitError, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return ExitError, err
	}
	p, err := projector.New(ctx, js, store, projector.Config{
		Stream: producer.StreamConfig{Replicas: o.replicas}, StoreName: o.store, Consumer: o.consumer,
		Workers: o.workers, BatchSize: o.batch, Logger: log,
	})
	if err != nil {
		return exitFor(err), err
	}
	return ExitOK, p.Run(ctx)
}

func exitFor(err error) int {
	if errors.Is(err, stores.ErrInvalidConfig) || errors.Is(err, projector.ErrInvalidConfig) ||
		errors.Is(err, producer.ErrInvalidConfig) || errors.Is(err, producer.ErrStreamMismatch) {
		return ExitUsage
	}
	return ExitError
}

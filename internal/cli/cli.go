// Package cli is the operator command, auditflow: inspecting the audit
// store (audit and issue listings, stats), fixing issues, managing locks,
// and the stream-as-source-of-truth operations (replay, verify, repair,
// test-connection, verify-schema). cmd/auditflow is its thin main.
//
// Every command prints a table for people or, with --json, JSON for tools,
// and exits with a documented code (see Exit*).
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/internal/logging"
	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/internal/storeflags"
	"github.com/auditflow/auditflow/internal/trustflags"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
)

// Exit codes.
const (
	ExitOK       = 0
	ExitError    = 1 // could not do it: unreachable server, permission, …
	ExitUsage    = 2 // bad flags or configuration
	ExitProblems = 3 // the check ran and found problems: drift, a broken chain, an open stream problem, an untrusted event, a bad schema, a failed connection test
	ExitNotFound = 4 // no such change or lock, or nothing to fix
	ExitRefused  = 5 // refused as unsafe: a runner may be applying the change (see --force)
)

var (
	errProblems = errors.New("problems found")
	errNotFound = errors.New("not found")
	errRefused  = errors.New("refused")
)

type usageError struct{ error }

func usage(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// app holds the global settings and what commands open lazily.
type app struct {
	nats       natsconn.Config
	store      storeflags.Config
	replicas   int
	asJSON     bool
	logLevel   string
	logFormat  string
	consumer   string
	lockBucket string
	signing    signing // --signing-key, --trust (signing.go)

	out, errOut io.Writer
	log         *slog.Logger

	nc         *nats.Conn
	js         jetstream.JetStream
	st         stores.Store
	closeStore func()
}

// Main runs the command line and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{out: stdout, errOut: stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	a.close()
	if err == nil {
		return ExitOK
	}
	if !errors.Is(err, errProblems) {
		fmt.Fprintln(stderr, "auditflow:", err)
	}
	var ue usageError
	switch {
	case errors.As(err, &ue), errors.Is(err, stores.ErrInvalidConfig), errors.Is(err, stores.ErrInvalidQuery),
		errors.Is(err, producer.ErrInvalidConfig), errors.Is(err, lock.ErrInvalidConfig), errors.Is(err, projector.ErrInvalidConfig),
		errors.Is(err, natsconn.ErrInvalidConfig), errors.Is(err, trustflags.ErrInvalid):
		return ExitUsage
	case errors.Is(err, errProblems):
		return ExitProblems
	case errors.Is(err, errNotFound):
		return ExitNotFound
	case errors.Is(err, errRefused):
		return ExitRefused
	}
	return ExitError
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "auditflow",
		Short: "Operate auditflow: audit history, issues, locks, replay, verify and repair",
		Long: `auditflow inspects and repairs an auditflow deployment: the audit stream on
NATS JetStream and an audit store (sqlite, mongo, dynamodb or couchbase, chosen
with --store and the store's flags, as for the projector).

Exit codes: 0 ok, 1 error, 2 bad usage or configuration, 3 problems found
(drift, broken hash chain, an unresolved bad message on a change's subject,
an unacknowledged downgrade or stale-token write, an untrusted event with
no trusted resolution after it (--trust), schema problems, failed
connection test), 4 not found or nothing to fix, 5 refused as unsafe
(issue fix while a runner may be applying the change; see --force).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logging.New(a.errOut, a.logLevel, a.logFormat)
			if err != nil {
				return usageError{err}
			}
			a.log = log
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	gofs := flag.NewFlagSet("auditflow", flag.ContinueOnError)
	a.nats.RegisterFlags(gofs)
	a.store.RegisterFlags(gofs)
	a.signing.flags.RegisterFlags(gofs)
	pf := root.PersistentFlags()
	pf.AddGoFlagSet(gofs)
	pf.BoolVar(&a.asJSON, "json", false, "print JSON instead of tables")
	pf.IntVar(&a.replicas, "stream-replicas", 1, "replicas of the audit stream (for checks and creation)")
	pf.StringVar(&a.consumer, "consumer", natsconn.Env("AUDITFLOW_CONSUMER", ""), "the projector's durable consumer for lag (default projector-<store>) [AUDITFLOW_CONSUMER]")
	pf.StringVar(&a.lockBucket, "lock-bucket", lock.DefaultBucket, "the pipeline lock KV bucket")
	pf.StringVar(&a.logLevel, "log-level", natsconn.Env("AUDITFLOW_LOG_LEVEL", "warn"), "debug, info, warn or error [AUDITFLOW_LOG_LEVEL]")
	pf.StringVar(&a.logFormat, "log-format", natsconn.Env("AUDITFLOW_LOG_FORMAT", "text"), "text or json [AUDITFLOW_LOG_FORMAT]")
	root.AddCommand(a.initCommand(), a.restoreCommand())
	root.AddCommand(a.auditCommand(), a.issueCommand(), a.lockCommand(), a.statsCommand(),
		a.testConnectionCommand(), a.verifySchemaCommand(), a.replayCommand(), a.verifyCommand(), a.repairCommand(), a.keysCommand())
	return root
}

func (a *app) streamConfig() producer.StreamConfig {
	c := producer.StreamConfig{Replicas: a.replicas}
	_ = c.Validate() // fills defaults; replicas are checked where the stream is created
	return c
}

func (a *app) consumerName() string {
	if a.consumer != "" {
		return a.consumer
	}
	return "projector-" + a.store.Kind
}

// connect opens NATS once.
func (a *app) connect() (jetstream.JetStream, error) {
	if a.js != nil {
		return a.js, nil
	}
	a.nats.Name = "auditflow-cli"
	nc, err := natsconn.Connect(a.nats, a.log)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	a.nc, a.js = nc, js
	return js, nil
}

// openStore opens the configured store once.
func (a *app) openStore(ctx context.Context) (stores.Store, error) {
	if a.st != nil {
		return a.st, nil
	}
	st, closeStore, err := a.store.Open(ctx, a.log)
	if err != nil {
		return nil, err
	}
	a.st, a.closeStore = st, closeStore
	return st, nil
}

func (a *app) close() {
	if a.closeStore != nil {
		a.closeStore()
	}
	if a.nc != nil {
		a.nc.Close()
	}
}

// emit prints v as JSON with --json, or runs table otherwise.
func (a *app) emit(v any, table func(w *tabwriter.Writer)) error {
	if a.asJSON {
		enc := json.NewEncoder(a.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

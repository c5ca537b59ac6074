// Package cli is the operator command, auditflow: inspecting the audit
// store (audit and issue listings, stats, dead letters), fixing issues, managing locks,
// and the stream-as-source-of-truth operations (replay, verify, repair,
// test-connection, verify-schema). cmd/auditflow is its thin main.
//
// Every command prints a table for people or, with --json, JSON for tools
// (camelCase, [] for empty lists, durations in ms: the golden files in
// testdata/ pin them), and exits with a documented code (see Exit*).
// Commands that only read open the store read-only and create nothing.
// After runner --embedded, the commands read its data directory in-process
// with no flags (embedded.go), and bring its SQLite store — a local copy
// of the local stream — up to date before reading (catchUp), so that each
// command sees the effect of the one before.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"reflect"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/internal/buildinfo"
	"github.com/auditflow/auditflow/internal/embedded"
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
	nats           natsconn.Config
	store          storeflags.Config
	replicas       int
	asJSON         bool
	logLevel       string
	logFormat      string
	consumer       string
	lockBucket     string
	signing        signing // --signing-key, --trust (signing.go)
	insecureWarned bool    // --insecure-no-trust was warned about
	embedded       bool    // --embedded, or detected: read runner --embedded's data dir in-process
	dataDir        string  // --data-dir
	detected       bool    // embedded was detected, not asked for: say so once
	noted          bool
	localKey       bool // the signing key is the embedded mode's local key (trust.LocalKey), picked by setUpEmbedded
	readOnly       bool // the command only reads: the store is opened read-only and nothing is created
	ran            bool // flags and arguments were accepted: a later error is not a usage error

	out, errOut io.Writer
	log         *slog.Logger

	srv        *embedded.Server
	nc         *nats.Conn
	js         jetstream.JetStream
	st         stores.Store
	closeStore func()
}

// readOnlyCommands only read: they open the store read-only (a missing
// SQLite file is an error naming it, never a new empty database) and
// create nothing on NATS.
var readOnlyCommands = map[string]bool{
	"auditflow audit list": true, "auditflow issue list": true, "auditflow issue get": true, "auditflow stats": true,
	"auditflow lock list": true, "auditflow test-connection": true, "auditflow verify-schema": true, "auditflow verify": true,
	"auditflow deadletter list": true, "auditflow deadletter show": true, "auditflow console": true,
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
	if !a.ran { // cobra refused the command line: an unknown command, a stray argument
		if !errors.As(err, new(usageError)) {
			fmt.Fprintln(stderr, "Run 'auditflow --help' for usage.")
		}
		return ExitUsage
	}
	var ue usageError
	switch {
	case errors.As(err, &ue), errors.Is(err, stores.ErrInvalidConfig), errors.Is(err, stores.ErrInvalidQuery), errors.Is(err, storeflags.ErrStoreMissing),
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
			a.ran = true
			log, err := logging.New(a.errOut, a.logLevel, a.logFormat)
			if err != nil {
				return usageError{err}
			}
			a.log = log
			a.readOnly = readOnlyCommands[cmd.CommandPath()]
			a.nats.Role = roleOf(cmd.CommandPath())
			if f := cmd.Flags().Lookup("dry-run"); f != nil && f.Value.String() == "true" {
				a.readOnly = true // a dry run (repair --dry-run) changes nothing, and creates no store either
			}
			return a.setUpEmbedded(cmd)
		},
	}
	root.Version = buildinfo.Read().String()
	root.SetVersionTemplate("auditflow {{.Version}}\n")
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
	pf.BoolVar(&a.embedded, "embedded", false, "read the data of runner --embedded in --data-dir: its NATS store, served in-process, and its SQLite store (the default when --data-dir exists and no NATS or store setting is given)")
	pf.StringVar(&a.dataDir, "data-dir", ".auditflow", "the data directory of runner --embedded")
	root.AddCommand(a.initCommand(), a.restoreCommand())
	root.AddCommand(a.auditCommand(), a.issueCommand(), a.lockCommand(), a.statsCommand(), a.deadletterCommand(),
		a.testConnectionCommand(), a.verifySchemaCommand(), a.replayCommand(), a.verifyCommand(), a.repairCommand(), a.keysCommand(),
		a.consoleCommand())
	root.AddCommand(a.bundleCommands()...)
	root.AddCommand(a.feedCommand()) // export --format ndjson [--follow]
	finishHelp(root, a)
	return root
}

// adminCommands create or restore what the engine runs on: the admin
// role's (deploy/nats/accounts.conf).
var adminCommands = map[string]bool{"auditflow init": true, "auditflow restore": true}

// roleOf is the role a command acts as, the default of its inbox prefix
// when the NATS URL names no user (natsconn.Config.Inbox): admin for init
// and restore, console for the console, operator for everything else —
// but the SIEM feed (feed, export --format ndjson), which runFeed sets to
// siem.
func roleOf(path string) string {
	switch {
	case adminCommands[path]:
		return natsconn.RoleAdmin
	case path == "auditflow console":
		return natsconn.RoleConsole
	}
	return natsconn.RoleOperator
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
	var nc *nats.Conn
	if a.embedded {
		a.note()
		srv, err := embedded.Start(embedded.Config{DataDir: filepath.Join(a.dataDir, "nats"), SyncAlways: true, Logger: a.log, Share: true})
		if err != nil {
			return nil, err
		}
		a.srv = srv
		if nc, err = srv.Connect("auditflow-cli"); err != nil {
			return nil, err
		}
	} else {
		a.nats.Name = "auditflow-cli"
		var err error
		if nc, err = natsconn.Connect(a.nats, a.log); err != nil {
			return nil, err
		}
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
	a.note()
	// The embedded store is a local copy of the local stream, which this
	// process brings up to date before reading (catchUp): it is opened
	// for writing, and created if it was deleted.
	a.store.ReadOnly = a.readOnly && !a.embedded
	st, closeStore, err := a.store.Open(ctx, a.log)
	if errors.Is(err, storeflags.ErrStoreMissing) && !a.embedded {
		return nil, fmt.Errorf("%w.\nNew here? `runner --embedded --changes examples/changes` runs the example changes and creates "+
			"the embedded data (in %s) that auditflow then reads with no flags. For a deployment's store give --store and its "+
			"flags (--sqlite-path FILE, --mongo-uri, …), or their AUDITFLOW_* variables", err, a.dataDir)
	}
	if err != nil {
		return nil, err
	}
	a.st, a.closeStore = st, closeStore
	if err := a.catchUp(ctx); err != nil {
		return nil, err
	}
	return st, nil
}

// catchUp brings the embedded SQLite store up to date with the stream,
// so that every command sees the effect of the one before it (a runner
// --embedded run, an issue fix) without a projector running in between.
// It replays what the stream holds past the projector's own checkpoint
// (the runner's projector, consumer projector-sqlite) and raises that
// checkpoint: the same progress record, so the runner's projector, when
// it next starts, finds the store at or past its consumer and redelivered
// events change nothing (applying is idempotent). Nothing to do outside
// the embedded mode, where the deployment's projectors keep the store.
func (a *app) catchUp(ctx context.Context) error {
	if !a.embedded || a.st == nil {
		return nil
	}
	js, err := a.connect()
	if err != nil {
		return err
	}
	list, err := a.trustList()
	if err != nil {
		return err
	}
	_, err = projector.Replay(ctx, js, a.st, projector.ReplayConfig{Stream: a.streamConfig(), Checkpoint: a.consumerName(),
		Trust: list, RetryFor: 5 * time.Second, Logger: a.log})
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil // no runner has run here yet: nothing to catch up with
	}
	if err != nil {
		return fmt.Errorf("bringing the embedded store %s up to date with the stream: %w", a.store.SQLite.Path, err)
	}
	return nil
}

func (a *app) close() {
	if a.closeStore != nil {
		a.closeStore()
	}
	if a.nc != nil {
		a.nc.Close()
	}
	if a.srv != nil {
		a.srv.Close()
	}
}

// emit prints v as JSON with --json, or runs table otherwise.
func (a *app) emit(v any, table func(w *tabwriter.Writer)) error {
	if a.asJSON {
		if rv := reflect.ValueOf(v); rv.Kind() == reflect.Slice && rv.IsNil() {
			v = []struct{}{} // an empty list is [], never null
		}
		enc := json.NewEncoder(a.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

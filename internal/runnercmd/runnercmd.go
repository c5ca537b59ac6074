// Package runnercmd is the runner command: flags, wiring and output. It
// lives in a package, not in main, so it can be tested end to end.
package runnercmd

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/buildinfo"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/logging"
	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/internal/redact"
	"github.com/auditflow/auditflow/internal/render"
	"github.com/auditflow/auditflow/internal/storeflags"
	"github.com/auditflow/auditflow/internal/tokenfloor"
	"github.com/auditflow/auditflow/internal/trustflags"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/runner/changefile"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
	"github.com/auditflow/auditflow/trust"
)

// Exit codes, documented in the README.
const (
	ExitOK                 = 0
	ExitError              = 1 // infrastructure or unexpected error
	ExitUsage              = 2 // bad flags, config or change files
	ExitChangeFailed       = 3
	ExitManualIntervention = 4
	ExitLockNotObtained    = 5 // includes a lock lost mid-run, and a resolution refused while a runner may hold the change
	// A run stopped by a signal exits 128 + the signal's number, the
	// shell's convention: 130 for SIGINT, 143 for SIGTERM.
	ExitInterrupted = 128
)

// SignalContext returns a context cancelled when the process receives
// SIGINT or SIGTERM, with the signal as its cause (context.Cause), so that
// Main can record "interrupted (SIGTERM)" and exit 143. stop releases the
// signal handling; a second signal then kills the process as usual.
func SignalContext(parent context.Context) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-ch:
			cancel(Signal{sig.(syscall.Signal)})
			signal.Stop(ch) // a second Ctrl-C kills at once
		case <-done:
		}
	}()
	return ctx, func() { signal.Stop(ch); close(done); cancel(nil) }
}

// Signal is the cause of a run stopped by a signal.
type Signal struct{ Sig syscall.Signal }

func (s Signal) Error() string {
	switch s.Sig {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.Sig.String()
}

type options struct {
	nats        natsconn.Config
	changes     string
	pipeline    string
	dryRun      bool
	embedded    bool
	dataDir     string
	syncAlways  bool
	replicas    int
	lease       time.Duration
	lockRetry   time.Duration
	lockGiveUp  time.Duration
	runnerID    string
	resolve     string
	resolution  string
	reason      string
	operator    string
	force       bool
	operatorSet bool // --operator given, not $USER's default
	sig         trustflags.Config
	stopGrace   time.Duration
	logLevel    string
	logFormat   string
	secrets     []string // values to mask in what the runner shows and records
}

// secrets are the values the runner masks in change output and traces,
// logs and errors: its NATS credentials (the URL's password or token, what
// the URL, creds, nkey and TLS key files hold), and the secrets in its
// environment and in the files it names (store URIs and passwords, AWS and
// other credentials, whoever they are for: a change may be given them).
func secrets(o *options) []string {
	environ := os.Environ()
	var out []string
	if !o.embedded {
		out = o.nats.Secrets()
	}
	out = append(out, redact.EnvSecrets(environ)...)
	for _, path := range redact.SecretFiles(environ) {
		if b, err := readSmall(path); err == nil {
			out = append(out, redact.FileSecrets(string(b))...)
		}
	}
	return out
}

// readSmall reads a file of at most 64 KiB; a secret file is small.
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 64<<10))
}

// errVersion: --version was asked for.
var errVersion = errors.New("version")

func parse(args []string, stdout, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("runner", flag.ContinueOnError)
	fs.SetOutput(stderr)
	// -h prints the usage on stdout (it is what was asked for); a bad
	// flag gets its error and a pointer to -h on stderr.
	fs.Usage = func() {}
	usageText := func() {
		fs.SetOutput(stdout)
		defer fs.SetOutput(stderr)
		fmt.Fprint(stdout, `Usage: runner --changes DIR [flags]          apply a pipeline's change files
       runner --resolve CHANGE --resolution applied|rolled-back --reason TEXT
                                              record an operator's decision: an alias
                                              of auditflow issue fix; prefer that

Exit codes: 0 ok, 1 error, 2 bad usage/config, 3 change failed,
            4 manual intervention needed (including overlapped executions,
              and a change whose newest message on the stream is not its
              event: garbage, or another change's event),
            5 lock not obtained or lost (or --resolve refused while a runner
              may be applying the change),
            130 interrupted by SIGINT, 143 by SIGTERM (the change got SIGTERM
              and a grace period; its outcome and any rollback are recorded).

Examples:
  runner --embedded --changes examples/changes     # in-process NATS and SQLite under .auditflow/
  runner --embedded --changes examples/changes --dry-run
  runner --nats-url nats://nats:4222 --pipeline billing --changes ./changes
  auditflow issue fix -p billing -c 0002-add-customer-index -r applied --reason "index exists"   # records a decision (runner --resolve is its alias)

Flags:
`)
		fs.PrintDefaults()
	}
	var version bool
	fs.BoolVar(&version, "version", false, "print the version, commit and Go version, and exit")
	o.nats.RegisterFlags(fs)
	fs.StringVar(&o.changes, "changes", "", "directory of *.yaml change files")
	fs.StringVar(&o.pipeline, "pipeline", natsconn.Env("AUDITFLOW_PIPELINE", "default"), "pipeline (service or fleet) name [AUDITFLOW_PIPELINE]")
	fs.BoolVar(&o.dryRun, "dry-run", false, "print the plan and change nothing")
	fs.BoolVar(&o.embedded, "embedded", false, "run an in-process NATS server and projector into SQLite under --data-dir, then print the changeLog")
	fs.StringVar(&o.dataDir, "data-dir", ".auditflow", "where --embedded keeps its stream and SQLite store")
	fs.BoolVar(&o.syncAlways, "sync-always", true, "with --embedded: fsync every event before acknowledging it")
	fs.IntVar(&o.replicas, "stream-replicas", 1, "replicas the audit stream and lock bucket must have (auditflow init creates them; --embedded here)")
	fs.DurationVar(&o.lease, "lock-lease", lock.DefaultLease, "pipeline lock lease")
	fs.DurationVar(&o.lockRetry, "lock-retry", lock.DefaultRetryInterval, "first wait between attempts on a held lock")
	fs.DurationVar(&o.lockGiveUp, "lock-give-up", lock.DefaultGiveUpAfter, "how long to wait for a held lock")
	fs.DurationVar(&o.stopGrace, "stop-grace", changefile.DefaultGrace, "how long a stopped change (interrupt, lost lease, timeout) has between SIGTERM and SIGKILL; a change file's grace: overrides it")
	fs.StringVar(&o.runnerID, "runner-id", natsconn.Env("AUDITFLOW_RUNNER_ID", ""), "this runner's id in events (default host-pid) [AUDITFLOW_RUNNER_ID]")
	fs.StringVar(&o.resolve, "resolve", "", "change id to record a manual resolution for: an alias of auditflow issue fix; prefer that")
	fs.StringVar(&o.resolution, "resolution", "", "with --resolve: applied or rolled-back")
	fs.StringVar(&o.reason, "reason", "", "with --resolve: why (recorded in the audit log)")
	fs.StringVar(&o.operator, "operator", natsconn.Env("USER", ""), "with --resolve: who decides (default $USER); with --signing-key, the key's identity is recorded and this may only repeat its name")
	o.sig.RegisterFlags(fs)
	fs.BoolVar(&o.force, "force", false, "with --resolve: record without the pipeline lock, even while a runner may be applying the change (it may then run twice)")
	fs.StringVar(&o.logLevel, "log-level", natsconn.Env("AUDITFLOW_LOG_LEVEL", "info"), "debug, info, warn or error [AUDITFLOW_LOG_LEVEL]")
	fs.StringVar(&o.logFormat, "log-format", natsconn.Env("AUDITFLOW_LOG_FORMAT", "text"), "text or json [AUDITFLOW_LOG_FORMAT]")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		usageText()
		return nil, err
	} else if err != nil {
		return nil, fmt.Errorf("%w (runner -h shows the flags)", err)
	}
	if version {
		return nil, errVersion
	}
	fs.Visit(func(f *flag.Flag) { o.operatorSet = o.operatorSet || f.Name == "operator" })
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case o.resolve == "" && o.changes == "":
		return nil, errors.New("--changes: required (a directory of change files)")
	case o.resolve != "" && o.changes != "":
		return nil, errors.New("--resolve and --changes: choose one")
	case o.resolve != "" && o.resolution != "applied" && o.resolution != "rolled-back":
		return nil, fmt.Errorf("--resolution: want applied or rolled-back, got %q", o.resolution)
	case o.resolve != "" && strings.TrimSpace(o.reason) == "":
		return nil, errors.New("--reason: required with --resolve; it goes into the audit log")
	case o.resolve != "" && o.operator == "" && o.sig.SigningKey == "":
		return nil, errors.New("--operator: required with --resolve (no $USER to default to), or sign with --signing-key")
	case len(o.reason) > events.MaxMessageLen:
		return nil, fmt.Errorf("--reason: %d bytes; the limit is %d (events.MaxMessageLen)", len(o.reason), events.MaxMessageLen)
	case len(o.operator) > events.MaxTextLen:
		return nil, fmt.Errorf("--operator: %d bytes; the limit is %d (events.MaxTextLen)", len(o.operator), events.MaxTextLen)
	case o.pipeline == "":
		return nil, errors.New("--pipeline: empty")
	}
	if err := o.sig.Require(o.embedded); err != nil {
		return nil, err
	}
	return o, nil
}

// Main runs the command and returns its exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if errors.Is(err, errVersion) {
		fmt.Fprintln(stdout, buildinfo.Line("runner"))
		return ExitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "runner:", err)
		return ExitUsage
	}
	// Everything the runner writes to stderr — logs, errors — is masked
	// too: a change's error carries its output.
	o.secrets = secrets(o)
	stderr = redact.NewMasker(o.secrets...).RecordWriter(stderr)
	log, err := logging.New(stderr, o.logLevel, o.logFormat)
	if err != nil {
		fmt.Fprintln(stderr, "runner:", err)
		return ExitUsage
	}
	code, err := run(ctx, o, log, stdout)
	var sig Signal
	if errors.As(context.Cause(ctx), &sig) && (err != nil || code != ExitOK) {
		code = ExitInterrupted + int(sig.Sig)
	}
	if err != nil {
		fmt.Fprintln(stderr, "runner:", err)
		var ce *runner.ChangeError
		if errors.As(err, &ce) {
			fmt.Fprintln(stderr, "\n"+ce.Guidance(resolveHint(o)))
		}
	}
	return code
}

// resolveHint is the command the guidance prints to record a decision:
// auditflow issue fix, the one way to fix everywhere (runner --resolve is
// its alias). In the embedded mode auditflow reads the data directory with
// no flags, or with --data-dir when it is not the default.
func resolveHint(o *options) string {
	dd := ""
	if o.embedded && o.dataDir != ".auditflow" {
		dd = " --data-dir " + o.dataDir
	}
	return "auditflow" + dd + " issue fix -p %s -c %s -r applied|rolled-back --reason \"...\""
}

func run(ctx context.Context, o *options, log *slog.Logger, stdout io.Writer) (int, error) {
	var changes []runner.Change
	if o.changes != "" {
		dataDir, err := filepath.Abs(o.dataDir)
		if err != nil {
			return ExitUsage, err
		}
		if changes, err = changefile.Load(o.changes, changefile.Options{Pipeline: o.pipeline, Output: stdout, Grace: o.stopGrace,
			Env: []string{"AUDITFLOW_DATA_DIR=" + dataDir}, Secrets: o.secrets, Logger: log}); err != nil {
			return ExitUsage, err
		}
	}
	if o.embedded && o.dryRun {
		if _, err := os.Stat(filepath.Join(o.dataDir, "nats")); errors.Is(err, os.ErrNotExist) {
			// Nothing has run here: the plan is every change, and a dry
			// run creates nothing (no data dir, stream, bucket or store).
			plan := make([]runner.Step, len(changes))
			for i, c := range changes {
				plan[i] = runner.Step{Change: c, Action: runner.ActionRun, Reason: "never run (no embedded data in " + o.dataDir + " yet)"}
			}
			slices.SortStableFunc(plan, func(a, b runner.Step) int {
				return cmp.Or(cmp.Compare(a.Change.Order, b.Change.Order), cmp.Compare(a.Change.ID, b.Change.ID))
			})
			printPlan(stdout, plan)
			return ExitOK, nil
		}
	}
	var nc *nats.Conn
	if o.embedded {
		srv, err := embedded.Start(embedded.Config{DataDir: filepath.Join(o.dataDir, "nats"), SyncAlways: o.syncAlways, Logger: log, Share: true})
		if err != nil {
			return ExitError, err
		}
		defer srv.Close()
		if nc, err = srv.Connect("auditflow-runner"); err != nil {
			return ExitError, err
		}
	} else {
		o.nats.Name = "auditflow-runner"
		o.nats.Role = natsconn.RunnerRole(events.EncodeToken(o.pipeline))
		var err error
		if nc, err = natsconn.Connect(o.nats, log); err != nil {
			return codeFor(err), err
		}
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return ExitError, err
	}
	streamCfg := producer.StreamConfig{Replicas: o.replicas}
	if o.embedded && !o.dryRun { // this process's own server: create what auditflow init creates (a server's runners never do)
		if err := projector.EnsureStreams(ctx, js, projector.Config{Stream: streamCfg}); err != nil {
			return codeFor(err), err
		}
	}
	signer, list, err := o.sig.Load()
	if err != nil {
		return ExitUsage, err
	}
	if o.sig.Unchecked() {
		log.Warn("running without a trust list (--insecure-no-trust): the history this runner reads is believed whoever wrote it")
	}
	localKey := o.embedded && signer == nil && list == nil
	if localKey {
		// Zero setup: a local key, and a trust list that believes it (and
		// this stream's unsigned history, if any).
		s, err := js.Stream(ctx, producer.DefaultStreamName)
		if err != nil {
			return codeFor(err), err
		}
		if signer, list, err = trust.LocalKey(o.dataDir, s.CachedInfo().State.LastSeq); err != nil {
			return ExitError, err
		}
	}
	prod, err := producer.New(ctx, js, producer.Config{Stream: streamCfg, Signer: signer, Logger: log})
	if err != nil {
		return codeFor(err), err
	}
	locker, err := lock.New(ctx, js, lock.Config{CreateBucket: o.embedded && !o.dryRun, Replicas: o.replicas, Lease: o.lease, RetryInterval: o.lockRetry,
		GiveUpAfter: o.lockGiveUp, Owner: o.runnerID, Logger: log,
		// A bucket this process creates hands out tokens above those on the stream.
		TokenFloor: tokenfloor.Func(js, producer.DefaultStreamName, log),
		// Releases signed with the runner's key; believed only if signed by a listed key.
		Signer: signer, Trust: list})
	if err != nil {
		return codeFor(err), err
	}
	r, err := runner.New(prod, locker, runner.Config{Pipeline: o.pipeline, RunnerID: o.runnerID, Trust: list, Logger: log,
		Redact: redact.NewOutputMasker(o.secrets...).String})
	if err != nil {
		return ExitUsage, err
	}

	var proj *projector.Projector
	var store *sqlitestore.Store
	if o.embedded && !o.dryRun {
		var stop func()
		if proj, store, stop, err = startProjector(ctx, o, js, streamCfg, list, log); err != nil {
			return ExitError, err
		}
		defer stop()
	}

	switch {
	case o.resolve != "":
		res := events.ResolvedApplied
		if o.resolution == "rolled-back" {
			res = events.ResolvedRolledBack
		}
		if o.force {
			log.Warn("--force: recording without the pipeline lock; if a runner is still applying this change, its outcome will be recorded as OVERLAPPED, and with rolled-back the change runs a second time")
		}
		operator := o.operator
		if signer != nil && !o.operatorSet {
			operator = "" // $USER is not an identity: the key's is recorded
		}
		req := runner.Resolution{Pipeline: o.pipeline, ChangeID: o.resolve, Resolution: res, Operator: operator, Reason: o.reason, Force: o.force, Trust: list}
		if localKey {
			// The embedded mode's one local key signs for whoever runs it:
			// record their name beside the key, as without a trust list.
			req.Trust, req.Operator = nil, o.operator
		}
		who, err := runner.OperatorOf(signer, req)
		if err != nil {
			return codeFor(err), err
		}
		var seq uint64
		if localKey { // no list to name the operator by (see above)
			host, _ := os.Hostname()
			req.Host, req.RunnerID = host, o.runnerID
			seq, err = runner.Resolve(ctx, prod, locker, req)
		} else {
			seq, err = r.Resolve(ctx, req)
		}
		if err != nil {
			return codeFor(err), err
		}
		fmt.Fprintf(stdout, "recorded: change %s of %s resolved as %s by %s (stream sequence %d)\n", o.resolve, o.pipeline, res, who, seq)
	case o.dryRun:
		plan, err := r.Plan(ctx, changes)
		if err != nil {
			return codeFor(err), err
		}
		printPlan(stdout, plan)
		for _, s := range plan {
			if s.Bad != nil || s.Untrusted != nil { // what a run would stop at, and the way past it
				ce := &runner.ChangeError{Pipeline: o.pipeline, ChangeID: s.Change.ID, TargetSystem: s.Change.TargetSystem, State: s.State,
					Bad: s.Bad, Untrusted: s.Untrusted, Err: runner.ErrManualIntervention}
				fmt.Fprintf(stdout, "\n%s is BLOCKED: %s\n", s.Change.ID, ce.Guidance(resolveHint(o)))
			}
		}
		return ExitOK, nil
	default:
		rep, runErr := r.Run(ctx, changes)
		printReport(stdout, rep)
		if runErr != nil && proj == nil {
			return codeFor(runErr), runErr
		}
		if proj != nil {
			if err := showChangeLog(ctx, stdout, proj, store, o.pipeline); err != nil && runErr == nil {
				runErr = err
			}
			dd := ""
			if o.dataDir != ".auditflow" {
				dd = " --data-dir " + o.dataDir
			}
			fmt.Fprintf(stdout, "\nInspect it with the operator CLI (it reads %s): auditflow%s audit list | issue list | stats\n", o.dataDir, dd)
		}
		if runErr != nil {
			return codeFor(runErr), runErr
		}
	}
	return ExitOK, nil
}

func startProjector(ctx context.Context, o *options, js jetstream.JetStream, streamCfg producer.StreamConfig, list *trust.List, log *slog.Logger) (*projector.Projector, *sqlitestore.Store, func(), error) {
	path := filepath.Join(o.dataDir, "audit.db")
	store, err := sqlitestore.Open(ctx, path, sqlitestore.Config{})
	if err != nil {
		return nil, nil, nil, storeflags.SQLiteOpenError(path, err)
	}
	// Rebuild: the embedded store is a local copy of the local stream, so a
	// deleted audit.db is rebuilt from it rather than refused.
	proj, err := projector.New(ctx, js, store, projector.Config{Stream: streamCfg, StoreName: "sqlite", Rebuild: true, Trust: list, Logger: log})
	if err != nil {
		_ = store.Close()
		return nil, nil, nil, err
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { defer close(done); _ = proj.Run(pctx) }()
	return proj, store, func() { cancel(); <-done; _ = store.Close() }, nil
}

func codeFor(err error) int {
	switch {
	case errors.Is(err, runner.ErrManualIntervention):
		return ExitManualIntervention
	case errors.Is(err, runner.ErrChangeFailed):
		return ExitChangeFailed
	case errors.Is(err, runner.ErrLockNotObtained), errors.Is(err, runner.ErrLeaseLost), errors.Is(err, runner.ErrUnsafeResolution):
		return ExitLockNotObtained
	case errors.Is(err, runner.ErrInvalidChange), errors.Is(err, runner.ErrInvalidConfig), errors.Is(err, runner.ErrNothingToResolve),
		errors.Is(err, lock.ErrInvalidConfig), errors.Is(err, producer.ErrInvalidConfig), errors.Is(err, producer.ErrStreamMismatch),
		errors.Is(err, natsconn.ErrInvalidConfig), errors.Is(err, trustflags.ErrInvalid):
		return ExitUsage
	}
	return ExitError
}

func printPlan(w io.Writer, plan []runner.Step) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ORDER\tCHANGE\tACTION\tLAST STATE\tWHY")
	for _, s := range plan {
		state := render.Dash(string(s.State))
		switch {
		case s.Bad != nil && s.Bad.WrongSubject():
			state = fmt.Sprintf("another change's event (seq %d)", s.Bad.Head.Seq)
		case s.Bad != nil:
			state = fmt.Sprintf("undecodable (seq %d)", s.Bad.Head.Seq)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", render.Dash(s.Change.Order), s.Change.ID, s.Action, state, s.Reason)
	}
	_ = tw.Flush()
}

func printReport(w io.Writer, rep *runner.Report) {
	if rep == nil || len(rep.Results) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "\nRun of pipeline %s", rep.Pipeline)
	if rep.LockToken != 0 {
		fmt.Fprintf(tw, " (lock token %d)", rep.LockToken)
	}
	fmt.Fprintln(tw, ":\nCHANGE\tOUTCOME\tDURATION")
	for _, r := range rep.Results {
		d := "-"
		if r.Outcome != runner.OutcomeSkipped && r.Outcome != runner.OutcomeNotRun && r.Outcome != runner.OutcomeBlocked {
			d = r.Duration.Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.ChangeID, r.Outcome, d)
	}
	_ = tw.Flush()
}

// showChangeLog waits for the embedded projector to store everything, then
// prints the pipeline's changeLog oldest first.
func showChangeLog(ctx context.Context, w io.Writer, proj *projector.Projector, store stores.Store, pipeline string) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := proj.WaitCaughtUp(wctx); err != nil {
		return fmt.Errorf("projector did not catch up: %w", err)
	}
	rows, err := store.History(ctx, stores.HistoryQuery{Pipeline: pipeline, Limit: stores.MaxLimit})
	if err != nil {
		return err
	}
	slices.Reverse(rows)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "\nchangeLog of pipeline %s (%d events, from the audit store):\n", pipeline, len(rows))
	fmt.Fprintln(tw, "SEQ\tTIME (UTC)\tCHANGE\tSTATE\tDURATION\tAUTHOR\tRUNNER\tERROR")
	for _, r := range rows {
		row := render.RowOf(r, 80)
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, row.Time,
			r.ChangeID, row.State, row.Duration, render.Dash(r.Author), row.By, row.Detail)
	}
	return tw.Flush()
}

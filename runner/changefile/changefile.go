package changefile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/redact"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/runner/supervisor"
)

// DefaultTimeout bounds a command that sets no timeout.
const DefaultTimeout = 10 * time.Minute

// DefaultGrace is the time between SIGTERM and SIGKILL when neither the
// change file nor Options set one.
const DefaultGrace = supervisor.DefaultGrace

// File is the YAML form of a change unit.
type File struct {
	ID            string            `yaml:"id"`
	Author        string            `yaml:"author"`
	Order         string            `yaml:"order"`
	TargetSystem  string            `yaml:"targetSystem"`
	Recovery      events.Recovery   `yaml:"recovery"`
	Transactional bool              `yaml:"transactional"`
	Timeout       string            `yaml:"timeout"`
	Grace         string            `yaml:"grace"`
	Metadata      map[string]string `yaml:"metadata"`
	// Env sets variables for the commands. It may not set the variables
	// the runner sets for each change (AUDITFLOW_PIPELINE and the rest).
	Env map[string]string `yaml:"env"`
	// PassEnv names variables of the runner's environment the commands
	// need although they start with AUDITFLOW_, which the commands do not
	// inherit otherwise; a variable the runner does not have stays unset.
	PassEnv []string `yaml:"passEnv"`
	// SecretEnv names variables of the commands' environment whose values
	// are secrets although their names do not say so (the names that do,
	// DB_PASS or STRIPE_KEY, are found without it): their values are
	// masked in the commands' output and in what the runner records. A
	// variable may come from env: (a secret value this file declares),
	// passEnv: or the runner's environment; one the commands do not have
	// is warned about (Options.Logger).
	SecretEnv []string `yaml:"secretEnv"`
	Apply     string   `yaml:"apply"`
	Rollback  string   `yaml:"rollback"`
}

// Options configure how commands run.
type Options struct {
	Pipeline string
	// Output receives the commands' output as they run (nil discards); the
	// tail is also kept for the error trace.
	Output io.Writer
	// Env adds KEY=value entries to the commands' environment.
	Env []string
	// Secrets are values the commands' output must not show: they are
	// replaced by "***" in what Output receives and in the error trace
	// (values shorter than redact.MinLen are left alone). The runner passes
	// its own credentials and the secrets in its environment, which a
	// command may print (set -x, env) or be given (passEnv). The secrets of
	// the commands' own environment (by their names, or named in
	// secretEnv:) are added to them, and credentials recognisable by their
	// form (DB_PASS=…, "password": "…", a URL's password) are masked
	// whatever their value: see redact.NewOutputMasker.
	Secrets []string
	// Grace is how long a command has between SIGTERM and SIGKILL when it
	// is stopped; a change file's grace: overrides it. Zero means
	// DefaultGrace.
	Grace time.Duration
	// Logger receives warnings about the files (an order that sorts
	// differently as text than as a number) and which containment the
	// commands get (see runner/supervisor); nil discards them.
	Logger *slog.Logger
}

// Load reads every *.yaml and *.yml file in dir (not subdirectories), in
// name order, and returns their changes.
func Load(dir string, opts Options) ([]runner.Change, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var names []string
	for _, e := range entries {
		if ext := filepath.Ext(e.Name()); !e.IsDir() && (ext == ".yaml" || ext == ".yml") {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: no *.yaml change files in %s", ErrInvalid, dir)
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	seen := map[string]string{}
	var out []runner.Change
	orders := map[string]string{} // order → a file that has it
	for _, name := range names {
		path := filepath.Join(dir, name)
		f, err := parse(path)
		if err != nil {
			return nil, err
		}
		if prev, ok := seen[f.ID]; ok {
			return nil, fmt.Errorf("%w: %s: id %q is already used by %s", ErrInvalid, path, f.ID, prev)
		}
		seen[f.ID] = path
		c, err := f.change(absDir, opts)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
		}
		out = append(out, c)
		orders[f.Order] = path
	}
	warnNumericOrders(opts.Logger, orders)
	return out, nil
}

// warnNumericOrders warns when every order looks like a number and their
// text order — the one changes run in — is not their numeric order:
// "order: 10" runs before "order: 9". It warns rather than refuses, since
// the order of changes already applied must not change under them.
func warnNumericOrders(log *slog.Logger, orders map[string]string) {
	if log == nil || len(orders) < 2 {
		return
	}
	nums := map[string]float64{}
	for o := range orders {
		n, err := strconv.ParseFloat(strings.TrimSpace(o), 64)
		if err != nil {
			return // not all numeric: text order is clearly meant
		}
		nums[o] = n
	}
	byText := slices.Sorted(maps.Keys(orders))
	for i := 1; i < len(byText); i++ {
		a, b := byText[i-1], byText[i]
		if nums[a] > nums[b] {
			log.Warn("change file orders are compared as text, not as numbers: zero-pad them (\"0009\", \"0010\") to run them in numeric order",
				"runsFirst", fmt.Sprintf("order %s (%s)", a, orders[a]), "runsAfter", fmt.Sprintf("order %s (%s)", b, orders[b]))
			return
		}
	}
}

func parse(path string) (File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true) // a misspelt "rolback" must not silently mean "no rollback"
	var f File
	if err := dec.Decode(&f); errors.Is(err, io.EOF) {
		return File{}, fmt.Errorf("%w: file %s is empty (no YAML document): write a change in it (id, apply, …) or remove it", ErrInvalid, path)
	} else if err != nil {
		return File{}, fmt.Errorf("%w: %s: %s", ErrInvalid, path, yamlProblem(err))
	}
	// A second document would be silently ignored: refuse it.
	var next yaml.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		line := ""
		if err == nil {
			line = fmt.Sprintf(" (the second starts at line %d)", next.Line)
		}
		return File{}, fmt.Errorf("%w: %s holds more than one YAML document%s: put each change in a file of its own", ErrInvalid, path, line)
	}
	return f, nil
}

// knownKeys are a change file's keys, for error messages.
var knownKeys = func() string {
	t := reflect.TypeFor[File]()
	keys := make([]string, t.NumField())
	for i := range keys {
		keys[i] = t.Field(i).Tag.Get("yaml")
	}
	return strings.Join(keys, ", ")
}()

var unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)

// yamlProblem rewords the YAML decoder's errors for a change file's
// author: where (line), which key, and what is wrong with it.
func yamlProblem(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.TrimPrefix(msg, "unmarshal errors:\n  ")
	msg = strings.ReplaceAll(msg, "\n  ", "; ")
	msg = unknownField.ReplaceAllString(msg, "unknown key \"$1\" (the keys are "+knownKeys+")")
	return strings.ReplaceAll(msg, "changefile.File", "a change")
}

func (f File) change(dir string, opts Options) (runner.Change, error) {
	switch {
	case strings.TrimSpace(f.ID) == "":
		return runner.Change{}, errors.New("id is required")
	case strings.TrimSpace(f.Apply) == "":
		return runner.Change{}, errors.New("apply is required")
	case f.Recovery != "" && !f.Recovery.Valid():
		return runner.Change{}, fmt.Errorf("recovery %q is not %s or %s", f.Recovery, events.ManualIntervention, events.AlwaysRetry)
	}
	timeout, err := positive("timeout", f.Timeout, DefaultTimeout)
	if err != nil {
		return runner.Change{}, err
	}
	grace := opts.Grace
	if grace <= 0 {
		grace = DefaultGrace
	}
	if grace, err = positive("grace", f.Grace, grace); err != nil {
		return runner.Change{}, err
	}
	env, err := f.environment(os.Environ(), dir, opts)
	if err != nil {
		return runner.Change{}, err
	}
	mask := redact.NewOutputMasker(f.secrets(env, opts)...)
	cmd := func(script string) func(context.Context) error {
		return command{script: script, dir: dir, env: env, timeout: timeout, grace: grace, out: opts.Output, mask: mask, log: opts.Logger}.run
	}
	c := runner.Change{
		ID: f.ID, Author: f.Author, Order: f.Order, TargetSystem: f.TargetSystem, Recovery: f.Recovery,
		Transactional: f.Transactional, Metadata: f.Metadata,
		Apply: cmd(f.Apply),
	}
	if strings.TrimSpace(f.Rollback) != "" {
		c.Rollback = cmd(f.Rollback)
	}
	return c, nil
}

func positive(key, value string, def time.Duration) (time.Duration, error) {
	if value == "" {
		return def, nil
	}
	d, err := time.ParseDuration(value)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s %q is not a positive duration like 30s or 5m", key, value)
	}
	return d, nil
}

const (
	envLockToken   = "AUDITFLOW_LOCK_TOKEN"
	envExecutionID = "AUDITFLOW_EXECUTION_ID"
)

// runnerVars are set by the runner for each change: a change file can
// neither set nor pass them.
var runnerVars = []string{"AUDITFLOW_PIPELINE", "AUDITFLOW_CHANGE_ID", "AUDITFLOW_CHANGE_DIR", "AUDITFLOW_DATA_DIR", envExecutionID, envLockToken}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// environment is the commands' environment: the runner's own (environ)
// without its AUDITFLOW_* variables — its configuration and credentials:
// the NATS URL and credentials a command could forge audit events with,
// the store URIs and passwords — except those the file passes, then
// Options.Env, the file's env:, and the change's variables. Everything
// else is kept: PATH, HOME, locale, proxies, and the credentials of the
// change's own target systems are what commands need.
func (f File) environment(environ []string, dir string, opts Options) ([]string, error) {
	check := func(key, name string) error {
		switch {
		case !envName.MatchString(name):
			return fmt.Errorf("%s: %q is not a variable name", key, name)
		case slices.Contains(runnerVars, name):
			return fmt.Errorf("%s: %s is set by the runner for each change", key, name)
		}
		return nil
	}
	for _, name := range f.PassEnv {
		if err := check("passEnv", name); err != nil {
			return nil, err
		}
	}
	for _, name := range f.SecretEnv {
		if err := check("secretEnv", name); err != nil {
			return nil, err
		}
	}
	names := slices.Sorted(maps.Keys(f.Env))
	for _, name := range names {
		if err := check("env", name); err != nil {
			return nil, err
		}
	}
	var env []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "AUDITFLOW_") || slices.Contains(f.PassEnv, name) {
			env = append(env, kv)
		}
	}
	env = append(env, opts.Env...)
	for _, name := range names {
		env = append(env, name+"="+f.Env[name])
	}
	// The execution's variables are set per run, from Apply's context.
	return append(env, "AUDITFLOW_PIPELINE="+opts.Pipeline, "AUDITFLOW_CHANGE_ID="+f.ID, "AUDITFLOW_CHANGE_DIR="+dir), nil
}

// secrets are the values the commands' output must not show: Options'
// secrets, those of the commands' environment env (redact.EnvSecrets: by
// their names, and URL credentials), and the values of the variables
// secretEnv: names.
func (f File) secrets(env []string, opts Options) []string {
	out := slices.Concat(opts.Secrets, redact.EnvSecrets(env))
	for _, name := range f.SecretEnv {
		value, found := "", false
		for _, kv := range env { // the last one is the one a command gets
			if v, ok := strings.CutPrefix(kv, name+"="); ok {
				value, found = v, true
			}
		}
		switch {
		case !found && opts.Logger != nil:
			opts.Logger.Warn("secretEnv names a variable the commands do not have: nothing of it to mask", "change", f.ID, "variable", name)
		case found:
			out = append(out, value)
			out = append(out, redact.Secrets(value)...)
		}
	}
	return out
}

// traceTail is how much of a failed command's output is kept.
const traceTail = 32 << 10

// useSupervisor says whether commands run under a supervisor process;
// tests replace it to exercise the direct path.
var useSupervisor = supervisor.Installed

// errTimedOut is the cause of a command's own timeout, telling it apart
// from the runner cancelling Apply's context.
var errTimedOut = errors.New("timed out")

type command struct {
	script, dir    string
	env            []string
	timeout, grace time.Duration
	out            io.Writer
	mask           *redact.Masker
	log            *slog.Logger // says which containment the command got
}

func (c command) run(ctx context.Context) error {
	ctx, cancel := context.WithTimeoutCause(ctx, c.timeout, errTimedOut)
	defer cancel()
	tail := &tailBuffer{max: traceTail}
	var all io.Writer = tail
	if c.out != nil {
		all = io.MultiWriter(tail, c.out)
	}
	// Masked before anything keeps it: the trace goes on a stream that
	// cannot be purged and into every store.
	w := c.mask.Writer(all)
	spec := supervisor.Spec{Args: []string{"sh", "-c", c.script}, Dir: c.dir, Env: c.env, Stdout: w, Stderr: w, Grace: c.grace, Logger: c.log}
	if ex, ok := runner.ExecutionFrom(ctx); ok {
		spec.Env = append(slices.Clip(c.env), envLockToken+"="+strconv.FormatUint(ex.LockToken, 10), envExecutionID+"="+ex.ExecutionID)
		spec.Deadlines = ex.Deadlines
	}
	var res supervisor.Result
	var err error
	if useSupervisor() {
		res, err = supervisor.Run(ctx, spec)
	} else {
		res, err = runDirect(ctx, spec)
	}
	if err == nil && res.Leftovers > 0 {
		fmt.Fprintf(w, "auditflow: the command left %d process(es) running; they were killed\n", res.Leftovers)
	}
	_ = w.Flush()
	if err == nil {
		err = c.outcome(ctx, res)
	}
	if err == nil {
		return nil
	}
	// The tail is masked again as a whole: a line longer than the
	// writer holds back was passed on in parts (redact.MaxLine).
	if s := c.mask.String(tail.String()); s != "" {
		return fmt.Errorf("%w\n%s", err, s)
	}
	return err
}

// outcome turns how the command ended into Apply's error; its first line is
// what the runner records as the execution's error message, so it says who
// stopped the command and how it went.
func (c command) outcome(ctx context.Context, res supervisor.Result) error {
	if res.Success() {
		return nil
	}
	cause := context.Cause(ctx)
	switch {
	case cause == errTimedOut:
		return &stopError{msg: fmt.Sprintf("timed out after %s: %s", c.timeout, stopped(res)), cause: context.DeadlineExceeded}
	case cause != nil:
		return &stopError{msg: fmt.Sprintf("stopped (%v): %s", cause, stopped(res)), cause: cause}
	case res.Stopped == supervisor.StopDeadline:
		return &stopError{msg: "stopped by the supervisor at the lease's deadline: " + stopped(res), cause: context.DeadlineExceeded}
	case res.Stopped != supervisor.NotStopped:
		return &stopError{msg: fmt.Sprintf("stopped (%s): %s", res.Stopped, stopped(res))}
	}
	return errors.New(res.Exit())
}

// stopped tells how a stopped command ended.
func stopped(res supervisor.Result) string {
	var b strings.Builder
	if res.TermSent {
		b.WriteString("sent SIGTERM, ")
	}
	switch {
	case res.KillSent && res.Signal == syscall.SIGKILL && res.KillAtDeadline && res.TermSent:
		fmt.Fprintf(&b, "killed with SIGKILL at the kill deadline, %s later", seconds(res.StopTook))
	case res.KillSent && res.Signal == syscall.SIGKILL && res.KillAtDeadline:
		b.WriteString("killed with SIGKILL at the kill deadline")
	case res.KillSent && res.Signal == syscall.SIGKILL:
		fmt.Fprintf(&b, "killed with SIGKILL after the %s grace", res.Grace)
	case res.KillSent && !res.TermSent && res.Signal == 0:
		b.WriteString("killed (this system has no SIGTERM)")
	case res.Signal != 0:
		fmt.Fprintf(&b, "terminated by %s after %s", signalName(res.Signal), seconds(res.StopTook))
	default:
		fmt.Fprintf(&b, "exited %d after %s", res.ExitCode, seconds(res.StopTook))
	}
	if res.Unkillable > 0 {
		fmt.Fprintf(&b, " (%d process(es) survived SIGKILL)", res.Unkillable)
	}
	return b.String()
}

func seconds(d time.Duration) time.Duration {
	if d < time.Second {
		return d.Round(time.Millisecond)
	}
	return d.Round(10 * time.Millisecond)
}

func signalName(s syscall.Signal) string {
	switch s {
	case syscall.SIGTERM:
		return "SIGTERM"
	case syscall.SIGKILL:
		return "SIGKILL"
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGHUP:
		return "SIGHUP"
	}
	return "signal " + s.String()
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

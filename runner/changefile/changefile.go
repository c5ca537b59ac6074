// Package changefile loads change units from YAML files, so a pipeline can
// be written without Go: each file names a change and the shell commands
// that apply and (optionally) roll it back.
//
//	id: 0002-add-email-index
//	author: alice
//	order: "0002"
//	targetSystem: users-db
//	recovery: MANUAL_INTERVENTION   # or ALWAYS_RETRY
//	transactional: false
//	timeout: 5m                     # default 10m
//	metadata: {ticket: OPS-1234}
//	apply: sqlite3 users.db 'CREATE INDEX users_email ON users(email)'
//	rollback: sqlite3 users.db 'DROP INDEX IF EXISTS users_email'
//
// Commands run with `sh -c` in the directory holding the file, with the
// runner's environment, Options.Env, and AUDITFLOW_PIPELINE,
// AUDITFLOW_CHANGE_ID and AUDITFLOW_CHANGE_DIR. A non-zero exit is a failure; the tail of the
// command's output becomes the recorded error trace.
package changefile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/runner"
)

// DefaultTimeout bounds a command that sets no timeout.
const DefaultTimeout = 10 * time.Minute

// File is the YAML form of a change unit.
type File struct {
	ID            string            `yaml:"id"`
	Author        string            `yaml:"author"`
	Order         string            `yaml:"order"`
	TargetSystem  string            `yaml:"targetSystem"`
	Recovery      events.Recovery   `yaml:"recovery"`
	Transactional bool              `yaml:"transactional"`
	Timeout       string            `yaml:"timeout"`
	Metadata      map[string]string `yaml:"metadata"`
	Apply         string            `yaml:"apply"`
	Rollback      string            `yaml:"rollback"`
}

// ErrInvalid wraps every problem with a change file.
var ErrInvalid = errors.New("invalid change file")

// Options configure how commands run.
type Options struct {
	Pipeline string
	// Output receives the commands' output as they run (nil discards); the
	// tail is also kept for the error trace.
	Output io.Writer
	// Env adds KEY=value entries to the commands' environment.
	Env []string
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
	}
	return out, nil
}

func parse(path string) (File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return File{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true) // a misspelt "rolback" must not silently mean "no rollback"
	var f File
	if err := dec.Decode(&f); err != nil {
		return File{}, fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
	}
	return f, nil
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
	timeout := DefaultTimeout
	if f.Timeout != "" {
		d, err := time.ParseDuration(f.Timeout)
		if err != nil || d <= 0 {
			return runner.Change{}, fmt.Errorf("timeout %q is not a positive duration like 30s or 5m", f.Timeout)
		}
		timeout = d
	}
	env := append(os.Environ(), opts.Env...)
	env = append(env, "AUDITFLOW_PIPELINE="+opts.Pipeline, "AUDITFLOW_CHANGE_ID="+f.ID, "AUDITFLOW_CHANGE_DIR="+dir)
	c := runner.Change{
		ID: f.ID, Author: f.Author, Order: f.Order, TargetSystem: f.TargetSystem, Recovery: f.Recovery,
		Transactional: f.Transactional, Metadata: f.Metadata,
		Apply: command(f.Apply, dir, env, timeout, opts.Output),
	}
	if strings.TrimSpace(f.Rollback) != "" {
		c.Rollback = command(f.Rollback, dir, env, timeout, opts.Output)
	}
	return c, nil
}

// traceTail is how much of a failed command's output is kept.
const traceTail = 32 << 10

func command(script, dir string, env []string, timeout time.Duration, out io.Writer) func(context.Context) error {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", "-c", script)
		cmd.Dir, cmd.Env = dir, env
		configureKill(cmd) // on timeout, kill the whole process group
		cmd.WaitDelay = 5 * time.Second
		tail := &tailBuffer{max: traceTail}
		w := io.Writer(tail)
		if out != nil {
			w = io.MultiWriter(tail, out)
		}
		cmd.Stdout, cmd.Stderr = w, w
		err := cmd.Run()
		if err == nil {
			return nil
		}
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("timed out after %s: %w", timeout, err)
		}
		if s := tail.String(); s != "" {
			return fmt.Errorf("%w\n%s", err, s)
		}
		return err
	}
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

package changefile_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/runner/changefile"
)

func write(t testing.TB, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadAndRun(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "b.yaml", `
id: 0002-second
author: bob
order: "0002"
targetSystem: files
recovery: ALWAYS_RETRY
transactional: true
timeout: 5s
metadata: {ticket: OPS-2}
apply: echo "$AUDITFLOW_PIPELINE/$AUDITFLOW_CHANGE_ID" > applied.txt
rollback: rm -f applied.txt
`)
	write(t, dir, "a.yml", "id: 0001-first\napply: 'true'\n")
	write(t, dir, "notes.md", "not a change")
	changes, err := changefile.Load(dir, changefile.Options{Pipeline: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 2 || changes[0].ID != "0001-first" || changes[1].ID != "0002-second" {
		t.Fatalf("loaded %+v", changes)
	}
	c := changes[1]
	if c.Author != "bob" || c.Recovery != events.AlwaysRetry || !c.Transactional || c.Metadata["ticket"] != "OPS-2" || c.Rollback == nil || changes[0].Rollback != nil {
		t.Fatalf("fields not loaded: %+v", c)
	}
	if err := c.Apply(context.Background()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "applied.txt"))
	if err != nil || strings.TrimSpace(string(b)) != "billing/0002-second" {
		t.Fatalf("apply ran in the wrong place or env: %q %v", b, err)
	}
	if err := c.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "applied.txt")); !os.IsNotExist(err) {
		t.Fatal("rollback did not run")
	}
}

func TestFailureCarriesOutputAndTimeoutKills(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "fail.yaml", "id: f\napply: |\n  echo 'psql: relation exists' >&2\n  exit 3\n")
	write(t, dir, "slow.yaml", "id: s\ntimeout: 200ms\napply: sleep 30 & sleep 30\n")
	changes, err := changefile.Load(dir, changefile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = changes[0].Apply(context.Background())
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "relation exists") {
		t.Fatalf("failure = %v", err)
	}
	start := time.Now()
	err = changes[1].Apply(context.Background())
	if err == nil || !strings.Contains(err.Error(), "timed out after 200ms") {
		t.Fatalf("timeout = %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("timed-out command held on for %s", time.Since(start))
	}
}

func TestInvalidFiles(t *testing.T) {
	for name, body := range map[string]string{
		"no id":         "apply: 'true'\n",
		"no apply":      "id: x\n",
		"unknown field": "id: x\napply: 'true'\nrolback: 'true'\n",
		"bad recovery":  "id: x\napply: 'true'\nrecovery: SOMETIMES\n",
		"bad timeout":   "id: x\napply: 'true'\ntimeout: soon\n",
		"not yaml":      "id: [x\n",
	} {
		dir := t.TempDir()
		write(t, dir, "c.yaml", body)
		if _, err := changefile.Load(dir, changefile.Options{}); !errors.Is(err, changefile.ErrInvalid) {
			t.Errorf("%s: Load = %v, want ErrInvalid", name, err)
		}
	}
	dir := t.TempDir()
	write(t, dir, "a.yaml", "id: x\napply: 'true'\n")
	write(t, dir, "b.yaml", "id: x\napply: 'true'\n")
	if _, err := changefile.Load(dir, changefile.Options{}); !errors.Is(err, changefile.ErrInvalid) || !strings.Contains(err.Error(), "a.yaml") {
		t.Errorf("duplicate ids = %v", err)
	}
	if _, err := changefile.Load(t.TempDir(), changefile.Options{}); !errors.Is(err, changefile.ErrInvalid) {
		t.Errorf("empty dir = %v", err)
	}
}

// TestLoadNamesTheFileAndTheProblem: every refusal names the file and says
// what is wrong, in a change file author's words.
func TestLoadNamesTheFileAndTheProblem(t *testing.T) {
	for name, tc := range map[string]struct {
		body string
		want []string
	}{
		"empty":         {"", []string{"empty.yaml is empty"}},
		"only comments": {"# nothing yet\n", []string{"only comments.yaml is empty"}},
		"two documents": {"id: a\napply: 'true'\n---\nid: b\napply: 'true'\n", []string{"two documents.yaml holds more than one YAML document", "line 3"}},
		"unknown key":   {"id: a\napply: 'true'\nrolback: 'true'\n", []string{"unknown key.yaml", "line 3", `unknown key "rolback"`, "rollback"}},
		"bad type":      {"id: a\napply: 'true'\ntransactional: maybe\n", []string{"bad type.yaml", "line 3", "maybe"}},
		"no apply":      {"id: a\n", []string{"no apply.yaml", "apply is required"}},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, name+".yaml", tc.body)
			_, err := changefile.Load(dir, changefile.Options{})
			if !errors.Is(err, changefile.ErrInvalid) {
				t.Fatalf("Load = %v, want ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestNumericOrdersWarn: unquoted orders 9 and 10 run 10 first (text
// order); Load says so, naming both files, and still loads them.
func TestNumericOrdersWarn(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "a.yaml", "id: nine\norder: 9\napply: 'true'\n")
	write(t, dir, "b.yaml", "id: ten\norder: 10\napply: 'true'\n")
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if _, err := changefile.Load(dir, changefile.Options{Logger: log}); err != nil {
		t.Fatal(err)
	}
	if out := logs.String(); !strings.Contains(out, "compared as text") || !strings.Contains(out, "b.yaml") || !strings.Contains(out, "a.yaml") {
		t.Fatalf("no warning naming both files: %q", out)
	}
	logs.Reset()
	write(t, dir, "b.yaml", "id: ten\norder: \"10\"\napply: 'true'\n")
	write(t, dir, "a.yaml", "id: nine\norder: \"09\"\napply: 'true'\n")
	if _, err := changefile.Load(dir, changefile.Options{Logger: log}); err != nil || logs.Len() != 0 {
		t.Fatalf("zero-padded orders: %v, logs %q", err, logs.String())
	}
}

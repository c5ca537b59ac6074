package changefile_test

import (
	"context"
	"errors"
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

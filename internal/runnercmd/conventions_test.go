package runnercmd_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/runnercmd"
)

// TestHelpAndVersionOnStdout: -h and --version print what was asked for
// on stdout and exit 0; a bad flag says so on stderr and exits 2.
func TestHelpAndVersionOnStdout(t *testing.T) {
	code, out, stderr := runCmd(t, "-h")
	if code != runnercmd.ExitOK || !strings.Contains(out, "Usage: runner") || !strings.Contains(out, "-changes") ||
		!strings.Contains(out, "Examples:") || stderr != "" {
		t.Fatalf("-h: exit %d\nstdout %q\nstderr %q", code, out, stderr)
	}
	code, out, stderr = runCmd(t, "--version")
	if code != runnercmd.ExitOK || !strings.HasPrefix(out, "runner version ") || !strings.Contains(out, "commit") || !strings.Contains(out, "go1.") {
		t.Fatalf("--version: exit %d\nstdout %q\nstderr %q", code, out, stderr)
	}
	code, out, stderr = runCmd(t, "--bogus")
	if code != runnercmd.ExitUsage || out != "" || !strings.Contains(stderr, "bogus") {
		t.Fatalf("--bogus: exit %d\nstdout %q\nstderr %q", code, out, stderr)
	}
}

// TestEmbeddedDryRunCreatesNothing: a dry run before any run plans every
// change and leaves no data directory, stream, bucket or store behind.
func TestEmbeddedDryRunCreatesNothing(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	code, out, stderr := runCmd(t, "--embedded", "--data-dir", data, "--dry-run", "--changes", "../../examples/changes")
	if code != runnercmd.ExitOK || strings.Count(out, "RUN") != 4 {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Fatalf("dry run created %s: %v", data, err)
	}
	// After a run, a dry run plans from the stream and still creates no store.
	if code, out, stderr := runCmd(t, "--embedded", "--data-dir", data, "--changes", "../../examples/changes"); code != runnercmd.ExitOK {
		t.Fatalf("run: exit %d\n%s\n%s", code, out, stderr)
	}
	if err := os.Remove(filepath.Join(data, "audit.db")); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = runCmd(t, "--embedded", "--data-dir", data, "--dry-run", "--changes", "../../examples/changes")
	if code != runnercmd.ExitOK || strings.Count(out, "SKIP") != 4 {
		t.Fatalf("dry run after a run: exit %d\n%s\n%s", code, out, stderr)
	}
	if _, err := os.Stat(filepath.Join(data, "audit.db")); !os.IsNotExist(err) {
		t.Fatalf("dry run created the store: %v", err)
	}
}

// TestEmbeddedUnusableDataDirFailsAtOnce: a data directory that cannot be
// created fails in well under the server's 30 s wait, naming it.
func TestEmbeddedUnusableDataDirFailsAtOnce(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, out, stderr := runCmd(t, "--embedded", "--data-dir", filepath.Join(file, "data"), "--changes", "../../examples/changes")
	if code != runnercmd.ExitError || !strings.Contains(stderr, filepath.Join(file, "data")) || time.Since(start) > 5*time.Second {
		t.Fatalf("exit %d after %s\n%s\n%s", code, time.Since(start), out, stderr)
	}
}

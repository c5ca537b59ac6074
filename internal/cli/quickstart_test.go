package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/runnercmd"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// examples is the quickstart's change directory, found before any test
// changes the current directory.
var examples, _ = filepath.Abs("../../examples/changes")

// auditflow runs the command line in the current directory.
func auditflow(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := cli.Main(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// quickstart runs the README's quickstart in a new directory, which it
// makes the current one: runner --embedded on examples/changes.
func quickstart(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Chdir(dir)
	var out, errOut bytes.Buffer
	if code := runnercmd.Main(context.Background(), []string{"--embedded", "--changes", examples}, &out, &errOut); code != runnercmd.ExitOK {
		t.Fatalf("quickstart: exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	return dir
}

// TestQuickstartThenTheCLI is the newcomer's path: the quickstart, then
// the CLI's listings with no flags at all, on the same data.
func TestQuickstartThenTheCLI(t *testing.T) {
	quickstart(t)
	ids := []string{"0001-create-orders-schema", "0002-add-customer-index", "0003-backfill-order-totals", "0004-enable-checkout-v2-flag"}

	code, out, stderr := auditflow(t, "audit", "list")
	if code != cli.ExitOK || strings.Count(out, "APPLIED") != 4 || !strings.Contains(stderr, "reading the embedded data in .auditflow") {
		t.Fatalf("audit list: exit %d\n%s\n%s", code, out, stderr)
	}
	for _, id := range ids {
		if !strings.Contains(out, id) {
			t.Fatalf("audit list does not show %s:\n%s", id, out)
		}
	}
	code, out, stderr = auditflow(t, "issue", "list", "--all", "--json")
	var issues []map[string]any
	if code != cli.ExitOK || json.Unmarshal([]byte(out), &issues) != nil || len(issues) != 4 {
		t.Fatalf("issue list --all --json: exit %d\n%s\n%s", code, out, stderr)
	}
	if code, out, stderr = auditflow(t, "issue", "list"); code != cli.ExitOK || !strings.Contains(out, "no open issues") {
		t.Fatalf("issue list: exit %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = auditflow(t, "stats")
	if code != cli.ExitOK || !strings.Contains(out, "APPLIED 4") || !regexp.MustCompile(`stream at 8, store checkpoint 8`).MatchString(out) {
		t.Fatalf("stats: exit %d\n%s\n%s", code, out, stderr)
	}
	if code, out, stderr = auditflow(t, "lock", "list"); code != cli.ExitOK || !strings.Contains(out, "no locks held") {
		t.Fatalf("lock list: exit %d\n%s\n%s", code, out, stderr)
	}
	// The embedded trust list is picked up: verify judges signatures.
	if code, out, stderr = auditflow(t, "verify"); code != cli.ExitOK {
		t.Fatalf("verify: exit %d\n%s\n%s", code, out, stderr)
	}
	// A NATS or store setting means a deployment: no detection.
	if code, _, stderr = auditflow(t, "--nats-url", "nats://127.0.0.1:1", "issue", "list"); code != cli.ExitUsage || !strings.Contains(stderr, "auditflow.db") {
		t.Fatalf("issue list with --nats-url: exit %d, want %d naming the default store\n%s", code, cli.ExitUsage, stderr)
	}
}

// TestReadOnlyCommandsCreateNothing: with a wrong store path, the commands
// that only read fail (exit 2 or 3), naming the path, and leave no file
// behind; test-connection proves write access without leaving anything.
func TestReadOnlyCommandsCreateNothing(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	missing := filepath.Join(dir, "wrong", "audit.db")
	for _, args := range [][]string{
		{"issue", "list"}, {"audit", "list"}, {"audit", "list", "--history"}, {"stats"}, {"issue", "get", "-p", "p", "-c", "c"},
		{"verify-schema"}, {"test-connection"},
	} {
		full := append([]string{"--nats-url", "nats://127.0.0.1:1", "--sqlite-path", missing}, args...)
		code, out, stderr := auditflow(t, full...)
		if (code != cli.ExitUsage && code != cli.ExitProblems) || !strings.Contains(out+stderr, missing) {
			t.Errorf("%v: exit %d, want 2 or 3 naming %s\n%s%s", args, code, missing, out, stderr)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("read-only commands left %v behind", entries)
	}

	// On the quickstart's data, test-connection's write probe leaves the
	// store's files as they were.
	qs := quickstart(t)
	before := listDir(t, filepath.Join(qs, ".auditflow"))
	code, out, stderr := auditflow(t, "test-connection")
	if code != cli.ExitOK || !strings.Contains(out, "store write") || !strings.Contains(out, "writable") {
		t.Fatalf("test-connection: exit %d\n%s\n%s", code, out, stderr)
	}
	if after := listDir(t, filepath.Join(qs, ".auditflow")); !slices.Equal(before, after) {
		t.Fatalf("test-connection changed the data dir:\nbefore %v\nafter  %v", before, after)
	}
}

// listDir names the files directly in dir (not the NATS store's), with
// their sizes.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name()+"/")
			continue
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e.Name()+" "+strings.Repeat("#", min(int(fi.Size()/4096), 40)))
	}
	return out
}

// TestHelp: every command's help is on stdout, ends with examples, and
// shows the selected store's flags only.
func TestHelp(t *testing.T) {
	t.Chdir(t.TempDir())
	var walk func(path []string)
	seen := 0
	walk = func(path []string) {
		code, out, stderr := auditflow(t, append(path, "--help")...)
		if code != cli.ExitOK || stderr != "" || !strings.Contains(out, "Examples:") {
			t.Errorf("auditflow %s --help: exit %d, stderr %q, examples %v", strings.Join(path, " "), code, stderr, strings.Contains(out, "Examples:"))
		}
		if strings.Contains(out, "--mongo-uri") || !strings.Contains(out, "--sqlite-path") {
			t.Errorf("auditflow %s --help shows another store's flags, or not sqlite's", strings.Join(path, " "))
		}
		seen++
		_, cmds, ok := strings.Cut(out, "Available Commands:\n")
		if !ok {
			return
		}
		cmds, _, _ = strings.Cut(cmds, "\n\n")
		for _, line := range strings.Split(cmds, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] != "help" {
				walk(append(slices.Clone(path), f[0]))
			}
		}
	}
	walk(nil)
	if seen < 20 {
		t.Fatalf("walked %d commands only", seen)
	}
	if _, out, _ := auditflow(t, "--store", "mongo", "audit", "list", "--help"); !strings.Contains(out, "--mongo-uri") || strings.Contains(out, "--sqlite-path") {
		t.Fatalf("--store mongo --help does not show mongo's flags alone:\n%s", out)
	}
}

package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/runnercmd"
)

// volatile are the JSON keys whose values change from run to run (times,
// ids, hashes, timings, hosts and paths): the golden files keep the key
// and its JSON type, not its value. (Store writes are batched as the
// projector goes: their count varies.)
var volatile = []string{"since", "updatedAt", "occurredAt", "time", "eventId", "executionId", "hash", "prevHash", "host", "runnerId",
	"signer", "signature", "durationMs", "p50Ms", "p95Ms", "maxMs", "detail", "operator", "trust", "writes", "events"}

func normalize(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			_, obj := x.(map[string]any)
			if slices.Contains(volatile, k) && !obj { // an object (stats' writes) is compared key by key
				v[k] = fmt.Sprintf("<%T>", x)
				continue
			}
			v[k] = normalize(x)
		}
	case []any:
		for i := range v {
			v[i] = normalize(v[i])
		}
	}
	return v
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join(goldenDir, name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/cli -run Golden -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (if the change is meant, rerun with -update):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// goldenDir is testdata/, found before any test changes directory.
var goldenDir, _ = filepath.Abs("testdata")

// TestGoldenJSON: the JSON of every reading command, on the quickstart's
// data: its shape (camelCase keys, [] for empty lists, durations in ms) is
// an interface for tools, documented in the README.
func TestGoldenJSON(t *testing.T) {
	quickstart(t)
	for _, args := range [][]string{
		{"audit", "list"},
		{"audit", "list", "--history", "--limit", "2"},
		{"audit", "list", "-p", "nobody"},
		{"issue", "list"},
		{"issue", "list", "--all", "-p", "default"},
		{"issue", "get", "-p", "default", "-c", "0001-create-orders-schema"},
		{"stats"},
		{"lock", "list"},
		{"deadletter", "list"},
		{"test-connection"},
		{"verify-schema"},
	} {
		name := strings.Join(args, "_")
		t.Run(name, func(t *testing.T) {
			code, out, stderr := auditflow(t, append([]string{"--json"}, args...)...)
			if code != cli.ExitOK {
				t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
			}
			var v any
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, out)
			}
			var b bytes.Buffer
			enc := json.NewEncoder(&b)
			enc.SetEscapeHTML(false)
			enc.SetIndent("", "  ")
			if err := enc.Encode(normalize(v)); err != nil {
				t.Fatal(err)
			}
			golden(t, "json/"+strings.ReplaceAll(name, "-", "")+".json", b.Bytes())
		})
	}
}

// TestGoldenExitCodes: the exit code of each kind of command line, as the
// README's table documents them.
func TestGoldenExitCodes(t *testing.T) {
	dir := quickstart(t)
	// A change that fails: an open issue, for --fail-on-open.
	failing := filepath.Join(dir, "failing")
	if err := os.Mkdir(failing, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(failing, "0001.yaml"), []byte("id: 0001-fails\napply: exit 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var rout, rerr bytes.Buffer
	if code := runnercmd.Main(context.Background(), []string{"--embedded", "--pipeline", "failing", "--changes", failing}, &rout, &rerr); code != runnercmd.ExitChangeFailed {
		t.Fatalf("failing run: exit %d\n%s\n%s", code, rout.String(), rerr.String())
	}
	var got strings.Builder
	for _, args := range []string{
		"audit list",
		"--version",
		"--help",
		"audit --help",
		"bogus",
		"audit bogus",
		"audit list stray",
		"audit list -s BOGUS",
		"audit list --limit 0",
		"audit list --since -5m",
		"stats --since -5m",
		"stats --since yesterday",
		"stats --since 2026-01-02T03:04:05Z",
		"issue list --fail-on-open -p default",
		"issue list --fail-on-open",
		"issue get -p default",
		"issue get -p default -c no-such-change",
		"repair --dry-run",
		"deadletter show 1",
		"deadletter show x",
		"--sqlite-path wrong/audit.db issue list",
		"--store oracle issue list",
		"--embedded --store mongo issue list",
		"--data-dir nowhere --embedded issue list",
	} {
		code, _, _ := auditflow(t, strings.Fields(args)...)
		fmt.Fprintf(&got, "%d\tauditflow %s\n", code, args)
	}
	golden(t, "exitcodes.txt", []byte(got.String()))
}

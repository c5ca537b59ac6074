package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/runnercmd"
)

// brokenChange is a change whose apply and rollback fail: the run leaves
// an open issue.
const brokenChange = `id: 0001-broken
author: alice@example.com
order: "0001"
targetSystem: orders-db
recovery: MANUAL_INTERVENTION
timeout: 30s
apply: |
  echo "no such table" >&2
  exit 1
rollback: |
  echo "rollback failed too" >&2
  exit 1
`

// TestEmbeddedLoopIsClosed is the newcomer's loop in the embedded mode,
// with a console running all along: a failing run, then issue fix, then
// issue list and the console's API, with no projector run in between.
// Every step must see the one before: issue list shows the issue closed
// at once, the console's API within a second. A key made with console key
// new while the console runs is accepted within 2s, and an unknown key's
// 401 names the running console's keys file instead of sending the user
// to make another.
func TestEmbeddedLoopIsClosed(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	changes := filepath.Join(dir, "changes")
	if err := os.MkdirAll(changes, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(changes, "0001-broken.yaml"), []byte(brokenChange), 0o644); err != nil {
		t.Fatal(err)
	}
	// Two pipelines, each with a change left open by a failed run.
	for _, p := range []string{"a", "b"} {
		var out, errOut bytes.Buffer
		if code := runnercmd.Main(context.Background(), []string{"--embedded", "--changes", changes, "--pipeline", p}, &out, &errOut); code != runnercmd.ExitChangeFailed {
			t.Fatalf("runner --embedded on a failing change: exit %d, want %d\n%s\n%s", code, runnercmd.ExitChangeFailed, out.String(), errOut.String())
		}
		// The guidance names the one way to fix: auditflow issue fix.
		if want := "auditflow issue fix -p " + p + " -c 0001-broken"; !strings.Contains(errOut.String(), want) || strings.Contains(errOut.String(), "--resolve") {
			t.Fatalf("the runner's guidance does not print %q alone:\n%s", want, errOut.String())
		}
	}
	if code, out, stderr := auditflow(t, "issue", "list"); code != cli.ExitOK || strings.Count(out, "0001-broken") != 2 {
		t.Fatalf("issue list after the failing runs: exit %d, want two open issues\n%s\n%s", code, out, stderr)
	}

	// The console, on the embedded data, with one key.
	code, keyOut, stderr := auditflow(t, "console", "key", "new", "--name", "first")
	if code != cli.ExitOK {
		t.Fatalf("console key new: exit %d\n%s", code, stderr)
	}
	first := strings.TrimSpace(keyOut)
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var consoleErr bytes.Buffer
	wg.Go(func() {
		if code := cli.Main(ctx, []string{"console", "--listen", addr}, &bytes.Buffer{}, &consoleErr); code != cli.ExitOK {
			t.Errorf("console: exit %d", code)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		t.Logf("console's stderr:\n%s", consoleErr.String())
	})
	api := "http://" + addr + "/api/v1/issues"
	eventually(t, 10*time.Second, "the console serves the open issues", func() (bool, string) {
		n, status, body := openIssues(t, api, first)
		return status == http.StatusOK && n == 2, fmt.Sprintf("%d open, status %d: %s", n, status, body)
	})

	// A key made while the console runs counts within 2s; the CLI says so.
	code, keyOut, stderr = auditflow(t, "console", "key", "new", "--name", "second")
	if code != cli.ExitOK || !strings.Contains(stderr, "accepts it within a second") {
		t.Fatalf("console key new while the console runs: exit %d\n%s", code, stderr)
	}
	second := strings.TrimSpace(keyOut)
	eventually(t, 2*time.Second, "the new key is accepted", func() (bool, string) {
		_, status, body := openIssues(t, api, second)
		return status == http.StatusOK, fmt.Sprintf("status %d: %s", status, body)
	})
	_, status, body := openIssues(t, api, "afc_unknown")
	if status != http.StatusUnauthorized || !strings.Contains(body, filepath.Join(".auditflow", "console-keys")) || strings.Contains(body, "key new") {
		t.Fatalf("an unknown key: status %d, want 401 naming the keys file and not sending the user to make a key\n%s", status, body)
	}

	// issue fix in the embedded mode (it joins the console's server)
	// stores its decision before returning: the store, read with no
	// catch-up (as a deployment's store), has a's issue closed.
	code, out, stderr := auditflow(t, "issue", "fix", "-p", "a", "-c", "0001-broken", "-r", "rolled-back", "--reason", "fixed the script", "--operator", "alice")
	if code != cli.ExitOK {
		t.Fatalf("issue fix: exit %d\n%s\n%s", code, out, stderr)
	}
	db := filepath.Join(dir, ".auditflow", "audit.db")
	if code, out, stderr := auditflow(t, "--nats-url", "nats://127.0.0.1:1", "--sqlite-path", db, "issue", "list"); code != cli.ExitOK ||
		regexp.MustCompile(`(?m)^a\s+0001-broken`).MatchString(out) || !regexp.MustCompile(`(?m)^b\s+0001-broken`).MatchString(out) {
		t.Fatalf("the store right after issue fix -p a: exit %d, want b's issue alone\n%s\n%s", code, out, stderr)
	}

	// A decision recorded by a process that does not project (a deployment's
	// CLI, here on the console's shared server): the console stores it
	// itself, and shows it within a second; the embedded issue list and
	// stats catch up before they read.
	var info struct{ URL, Token string }
	if b, err := os.ReadFile(filepath.Join(dir, ".auditflow", "nats", "server.json")); err != nil || json.Unmarshal(b, &info) != nil {
		t.Fatalf("server.json: %v", err)
	}
	url := strings.Replace(info.URL, "nats://", "nats://"+info.Token+"@", 1)
	code, out, stderr = auditflow(t, "--nats-url", url, "--signing-key", filepath.Join(dir, ".auditflow", "signing.nk"),
		"issue", "fix", "-p", "b", "-c", "0001-broken", "-r", "rolled-back", "--reason", "fixed the script", "--operator", "bob")
	if code != cli.ExitOK {
		t.Fatalf("issue fix over the shared server: exit %d\n%s\n%s", code, out, stderr)
	}
	start := time.Now()
	eventually(t, time.Second, "the console shows the issue closed", func() (bool, string) {
		n, status, body := openIssues(t, api, first)
		return status == http.StatusOK && n == 0, fmt.Sprintf("%d open, status %d: %s", n, status, body)
	})
	t.Logf("the console showed the fix after %v", time.Since(start).Round(time.Millisecond))
	if code, out, stderr := auditflow(t, "issue", "list"); code != cli.ExitOK || !strings.Contains(out, "no open issues") {
		t.Fatalf("issue list right after issue fix: exit %d, want no open issues\n%s\n%s", code, out, stderr)
	}
	if code, out, stderr := auditflow(t, "stats"); code != cli.ExitOK || !strings.Contains(out, "open issues      0") || !strings.Contains(out, "0 events not yet stored") {
		t.Fatalf("stats right after issue fix: want no open issue and nothing to store: exit %d\n%s\n%s", code, out, stderr)
	}
}

// openIssues asks the console's issues API with key: how many are open,
// the status and the body.
func openIssues(t *testing.T, url, key string) (int, int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1, 0, err.Error()
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	var got struct {
		Issues []json.RawMessage `json:"issues"`
	}
	_ = json.Unmarshal(b.Bytes(), &got)
	return len(got.Issues), resp.StatusCode, b.String()
}

// eventually polls cond until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; last: %s", what, within, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freeAddr is a 127.0.0.1 address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// TestMessagesPointSomewhere: on a fresh clone and around the quickstart,
// what the commands say leads somewhere: a missing store points at the
// quickstart and at --store; the first embedded run does not open with a
// replay that had nothing to do; issue get --guidance with the store
// missing says the change is on the stream and what is missing, instead of
// "not found".
func TestMessagesPointSomewhere(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	code, out, stderr := auditflow(t, "audit", "list")
	if code != cli.ExitUsage || !strings.Contains(stderr, "runner --embedded --changes examples/changes") || !strings.Contains(stderr, "--store") {
		t.Fatalf("audit list in a fresh directory: exit %d, want %d pointing at the quickstart and --store\n%s%s", code, cli.ExitUsage, out, stderr)
	}

	var rout, rerr bytes.Buffer
	if code := runnercmd.Main(context.Background(), []string{"--embedded", "--changes", examples, "--log-level", "info"}, &rout, &rerr); code != runnercmd.ExitOK {
		t.Fatalf("quickstart: exit %d\n%s\n%s", code, rout.String(), rerr.String())
	}
	if strings.Contains(rerr.String(), "nothing to replay") {
		t.Fatalf("the first embedded run logs a replay with nothing to do:\n%s", rerr.String())
	}

	// The same time syntax as the console's API: a duration or an RFC 3339 time.
	for _, since := range []string{"24h", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)} {
		if code, out, stderr := auditflow(t, "audit", "list", "--since", since); code != cli.ExitOK || strings.Count(out, "APPLIED") != 4 {
			t.Fatalf("audit list --since %s: exit %d, want the 4 changes\n%s%s", since, code, out, stderr)
		}
	}

	// The quickstart's stream served to another process; a store that is not there.
	srv, err := embedded.Start(embedded.Config{DataDir: filepath.Join(dir, ".auditflow", "nats"), Share: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	var info struct{ URL, Token string }
	if b, err := os.ReadFile(filepath.Join(dir, ".auditflow", "nats", "server.json")); err != nil || json.Unmarshal(b, &info) != nil {
		t.Fatalf("server.json: %v", err)
	}
	url := strings.Replace(info.URL, "nats://", "nats://"+info.Token+"@", 1)
	missing := filepath.Join(dir, "elsewhere.db")
	code, out, stderr = auditflow(t, "--nats-url", url, "--sqlite-path", missing, "issue", "get", "-p", "default", "-c", "0002-add-customer-index", "--guidance")
	if code != cli.ExitUsage || !strings.Contains(stderr, "has events on the stream") || !strings.Contains(stderr, missing) || strings.Contains(stderr, "not found") {
		t.Fatalf("issue get --guidance with the store missing: exit %d, want %d saying the change is on the stream and naming the store\n%s%s", code, cli.ExitUsage, out, stderr)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Fatalf("issue get created %s", missing)
	}
}

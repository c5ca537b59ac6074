//go:build unix

package faulttest

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestConsoleSeesAnEmbeddedRunnerLive is the README's path after the
// quickstart, as separate processes: a runner --embedded run, then
// `auditflow console` on its data, then a second runner --embedded run
// beside the console. The second run joins the console's embedded server
// (it does not fail on the data directory being in use), and the console's
// Server-Sent Events and API show its execution as it is stored.
func TestConsoleSeesAnEmbeddedRunnerLive(t *testing.T) {
	dir := t.TempDir()
	data, changes := filepath.Join(dir, ".auditflow"), filepath.Join(dir, "changes")
	if err := os.Mkdir(changes, 0o755); err != nil {
		t.Fatal(err)
	}
	changeFile(t, changes, "0001-first.yaml", "id: 0001-first\norder: \"0001\"\napply: echo first\n")
	embeddedRun := func() *proc {
		return start(t, "", bin.runner, "--embedded", "--changes", changes, "--data-dir", data, "--lock-lease", lease.String())
	}
	if code := embeddedRun().wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("the quickstart run exited %d", code)
	}

	key := consoleKey(t, "--data-dir", data)
	addr := freeAddr(t)
	start(t, "", bin.auditflow, "--data-dir", data, "console", "--listen", addr)
	c := consoleClient{addr: addr, key: key}
	c.waitUp(t)

	// Follow the live events before the second run.
	waitFor := c.follow(t)
	waitFor(`"status":"live"`)

	changeFile(t, changes, "0002-second.yaml", "id: 0002-second\norder: \"0002\"\napply: echo second\n")
	second := embeddedRun()
	waitFor(`"changeId":"0002-second"`)
	if code := second.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("the run beside the console exited %d:\n%s", code, second.out.String())
	}
	if strings.Contains(second.out.String(), "in use") {
		t.Fatalf("the second run did not join the console's server:\n%s", second.out.String())
	}
	var h struct {
		Events []struct {
			State string `json:"state"`
		} `json:"events"`
	}
	c.getJSON(t, "/api/v1/history?change=0002-second", &h)
	if len(h.Events) == 0 || h.Events[0].State != "APPLIED" {
		t.Fatalf("history of the second run's change: %+v", h)
	}
}

// consoleKey makes an API key with auditflow console key new (args say
// where to keep it) and returns it.
func consoleKey(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin.auditflow, append(args, "console", "key", "new", "--name", "reviewer")...).CombinedOutput()
	key := regexp.MustCompile(`afc_[A-Za-z0-9_-]+`).FindString(string(out))
	if err != nil || key == "" {
		t.Fatalf("console key new: %v\n%s", err, out)
	}
	return key
}

// consoleClient calls the API of a console process with an API key.
type consoleClient struct{ addr, key string }

func (c consoleClient) get(path string) (*http.Response, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+c.addr+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	return http.DefaultClient.Do(req)
}

// waitUp waits until the console answers /api/v1/stats.
func (c consoleClient) waitUp(t *testing.T) {
	t.Helper()
	eventually(t, 30*time.Second, "the console answers", func() bool {
		resp, err := c.get("/api/v1/stats")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// getJSON reads path's answer into v; anything but 200 fails the test.
func (c consoleClient) getJSON(t *testing.T, path string, v any) {
	t.Helper()
	resp, err := c.get(path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v\n%s", path, resp.StatusCode, err, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, b)
	}
}

// follow opens /api/v1/events and returns a function that waits for a
// line of the stream holding what.
func (c consoleClient) follow(t *testing.T) func(what string) {
	t.Helper()
	resp, err := c.get("/api/v1/events")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("events: %v %v", resp, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	return func(what string) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the event stream ended before %s", what)
				}
				if strings.Contains(l, what) {
					return
				}
			case <-deadline:
				t.Fatalf("no live event with %s", what)
			}
		}
	}
}

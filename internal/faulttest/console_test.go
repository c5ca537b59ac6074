//go:build unix

package faulttest

import (
	"bufio"
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

	out, err := exec.Command(bin.auditflow, "--data-dir", data, "console", "key", "new", "--name", "reviewer").CombinedOutput()
	key := regexp.MustCompile(`afc_[A-Za-z0-9_-]+`).FindString(string(out))
	if err != nil || key == "" {
		t.Fatalf("console key new: %v\n%s", err, out)
	}
	addr := freeAddr(t)
	start(t, "", bin.auditflow, "--data-dir", data, "console", "--listen", addr)
	call := func(path string) (*http.Response, error) {
		req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+key)
		return http.DefaultClient.Do(req)
	}
	eventually(t, 30*time.Second, "the console answers", func() bool {
		resp, err := call("/api/v1/stats")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	// Follow the live events before the second run.
	resp, err := call("/api/v1/events")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("events: %v %v", resp, err)
	}
	defer resp.Body.Close()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitFor := func(what string) {
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
	r, err := call("/api/v1/history?change=0002-second")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var body strings.Builder
	sc := bufio.NewScanner(r.Body)
	for sc.Scan() {
		body.WriteString(sc.Text())
	}
	if !strings.Contains(body.String(), `"APPLIED"`) {
		t.Fatalf("history of the second run's change: %s", body.String())
	}
}

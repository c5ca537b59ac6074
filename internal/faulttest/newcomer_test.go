//go:build unix

package faulttest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestNewcomersPath walks the path a new user takes, as processes, from a
// fresh clone (the repository's tracked files, nothing built or run):
// install the binaries as the README says (go install ./cmd/...), run the
// README's quickstart blocks as given, use the CLI with no flags, write a
// change of one's own that fails, run the fix command the runner prints
// as printed, see the issue closed at once, then open the console, make
// a key while it runs and use it at once.
func TestNewcomersPath(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries with go install")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	clone := filepath.Join(t.TempDir(), "auditflow")
	fresh(t, root, clone)
	bin := t.TempDir()
	env := newcomerEnv(bin)

	sh := func(t *testing.T, want int, script string) string {
		t.Helper()
		cmd := exec.Command("sh", "-ec", script)
		cmd.Dir, cmd.Env = clone, env
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("%s: %v", script, err)
		}
		if code != want {
			t.Fatalf("%s: exit %d, want %d\n%s", script, code, want, out)
		}
		return string(out)
	}

	// Install, as the README's Install section has it (into a GOBIN of the
	// test's, not the user's GOPATH).
	start := time.Now()
	sh(t, 0, "GOBIN="+bin+" go install ./cmd/...")
	t.Logf("go install ./cmd/...: %s", time.Since(start).Round(time.Millisecond))

	// The quickstart, block by block as the README gives it.
	blocks := runBlocks(t, filepath.Join(clone, "README.md"))
	if len(blocks) == 0 {
		t.Fatal("the README has no quickstart blocks marked <!-- run -->")
	}
	for _, b := range blocks {
		sh(t, 0, b)
	}
	if out := sh(t, 0, "auditflow audit list"); !strings.Contains(out, "APPLIED") {
		t.Fatalf("auditflow audit list after the quickstart:\n%s", out)
	}

	// A change of one's own that fails, and the fix the runner prints.
	if err := os.MkdirAll(filepath.Join(clone, "mine"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(clone, "mine", "0001-broken.yaml"),
		[]byte("id: 0001-broken\napply: |\n  echo 'relation \"orders\" does not exist' >&2\n  exit 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := sh(t, 3, "runner --embedded --changes mine --pipeline mine")
	fix := printedFix(t, out)
	t.Logf("the printed fix, as run: %s", fix)
	if out := sh(t, 0, "auditflow issue list"); !strings.Contains(out, "0001-broken") {
		t.Fatalf("the failed change is not an open issue:\n%s", out)
	}
	sh(t, 0, fix)
	if out := sh(t, 0, "auditflow issue list"); strings.Contains(out, "0001-broken") {
		t.Fatalf("the issue is still listed right after the fix (nothing closed the loop):\n%s", out)
	}

	// The console, and a key made while it runs.
	port := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	console := exec.CommandContext(ctx, filepath.Join(bin, "auditflow"), "console", "--listen", "127.0.0.1:"+port)
	console.Dir, console.Env = clone, env
	var consoleOut bytes.Buffer
	console.Stdout, console.Stderr = &consoleOut, &consoleOut
	if err := console.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = console.Wait() })
	base := "http://127.0.0.1:" + port
	waitHTTP(t, base+"/healthz", &consoleOut)
	key := strings.TrimSpace(lastLine(sh(t, 0, "auditflow console key new --name late")))
	start = time.Now()
	var body []byte
	for {
		var code int
		code, body = getWithKey(t, base+"/api/v1/changes?pipeline=mine", key)
		if code == http.StatusOK {
			break
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("a key made while the console runs: %d after 2s: %s\n%s", code, body, consoleOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("the new key worked %s after it was made", time.Since(start).Round(time.Millisecond))
	var changes struct {
		Changes []struct {
			ChangeID, State, Status string
		} `json:"changes"`
	}
	if err := json.Unmarshal(body, &changes); err != nil {
		t.Fatal(err)
	}
	if len(changes.Changes) != 1 || changes.Changes[0].Status == "OPEN" {
		t.Fatalf("the console's view of the fixed change: %s", body)
	}
}

// fresh copies the repository's tracked files (as a clone has them) from
// root into dir.
func fresh(t *testing.T, root, dir string) {
	t.Helper()
	out, err := exec.Command("git", "-C", root, "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	for _, f := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		src := filepath.Join(root, f)
		fi, err := os.Lstat(src)
		if err != nil || !fi.Mode().IsRegular() {
			continue // deleted in the work tree, or not a file
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, fi.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// newcomerEnv is a user's environment: the installed binaries first on
// PATH, and no auditflow settings.
func newcomerEnv(bin string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "AUDITFLOW_") || strings.HasPrefix(kv, "PATH=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// runBlocks returns the README's shell blocks marked <!-- run --> (the
// docs' convention for examples that run), in order.
func runBlocks(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	var cur []string
	marked, in := false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case in && strings.HasPrefix(line, "```"):
			out, in = append(out, strings.Join(cur, "\n")), false
		case in:
			cur = append(cur, line)
		case strings.TrimSpace(line) == "<!-- run -->":
			marked = true
		case marked && strings.HasPrefix(line, "```sh"):
			in, marked, cur = true, false, nil
		case strings.TrimSpace(line) != "":
			marked = false
		}
	}
	return out
}

// printedFix is the fix command in a runner's output, as a user would run
// it: the one in the guidance, with its choice made (rolled-back) and a
// reason written in.
func printedFix(t *testing.T, out string) string {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		i := strings.Index(line, "auditflow issue fix ")
		if i < 0 && strings.Contains(line, " --resolve ") {
			i = strings.Index(line, "runner ")
		}
		if i < 0 {
			continue
		}
		cmd := line[i:]
		if j := strings.Index(cmd, "  ("); j > 0 {
			cmd = cmd[:j]
		}
		cmd = regexp.MustCompile(`applied\|rolled-back`).ReplaceAllString(cmd, "rolled-back")
		cmd = strings.ReplaceAll(cmd, `"..."`, `"undone by hand"`)
		return strings.TrimSpace(cmd)
	}
	t.Fatalf("the runner printed no fix command:\n%s", out)
	return ""
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

func waitHTTP(t *testing.T, url string, log fmt.Stringer) {
	t.Helper()
	for start := time.Now(); time.Since(start) < 20*time.Second; time.Sleep(50 * time.Millisecond) {
		if res, err := http.Get(url); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
	}
	t.Fatalf("%s did not answer within 20s\n%s", url, log.String())
}

func getWithKey(t *testing.T, url, key string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

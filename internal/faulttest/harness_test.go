//go:build unix

package faulttest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// bin holds the binaries under test, built once by TestMain.
var bin struct{ runner, auditflow, projector, fencing string }

func TestMain(m *testing.M) {
	// The processes run without a trust list on purpose
	// (--insecure-no-trust, by its variable, which they inherit), unless a
	// test gives them one: most of these tests are about other things than
	// signatures, and those that are give --trust, which wins.
	os.Setenv("AUDITFLOW_INSECURE_NO_TRUST", "true")
	dir, err := os.MkdirTemp("", "auditflow-faulttest")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin.runner, bin.auditflow, bin.fencing = filepath.Join(dir, "runner"), filepath.Join(dir, "auditflow"), filepath.Join(dir, "fencing")
	bin.projector = filepath.Join(dir, "projector")
	for out, pkg := range map[string]string{bin.runner: "../../cmd/runner", bin.auditflow: "../../cmd/auditflow",
		bin.projector: "../../cmd/projector", bin.fencing: "../../examples/fencing"} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", pkg, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// lease is the lock lease every test process uses: short, so takeovers
// happen within a test, long enough for a loaded 2-core machine.
const lease = 3 * time.Second

// server is a nats-server reachable over TCP, for processes.
type server struct {
	*embedded.Server
	URL string
	JS  jetstream.JetStream
}

func startServer(t *testing.T) *server {
	t.Helper()
	s, err := embedded.Start(embedded.Config{DataDir: t.TempDir(), Port: -1, Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	_, js := natstest.ConnectURL(t, s.ClientURL())
	return &server{Server: s, URL: s.ClientURL(), JS: js}
}

// proc is a process under test with its output captured.
type proc struct {
	cmd  *exec.Cmd
	out  *proctest.Buffer
	done chan struct{}
	err  error
}

// start runs a binary with the NATS URL and the test lease in its
// environment.
func start(t *testing.T, url, path string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(path, args...), out: &proctest.Buffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "AUDITFLOW_NATS_URL="+url, "AUDITFLOW_LOG_LEVEL=debug")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		select {
		case <-p.done:
		default:
			if t.Failed() { // a stuck process: its goroutines and children say where
				if ps, err := exec.Command("ps", "-eo", "pid,ppid,pgid,stat,args", "--forest").Output(); err == nil {
					t.Logf("processes while %s is stuck:\n%s", filepath.Base(path), ps)
				}
				_ = p.cmd.Process.Signal(syscall.SIGQUIT)
				select {
				case <-p.done:
				case <-time.After(2 * time.Second):
				}
			}
		}
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s %v output:\n%s", filepath.Base(path), args, p.out.String())
		}
	})
	return p
}

// runner starts a runner process on a pipeline's change directory.
func runner(t *testing.T, url, changes, pipeline, id string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"--changes", changes, "--pipeline", pipeline, "--runner-id", id, "--lock-lease", lease.String(),
		"--lock-retry", "100ms", "--lock-give-up", "1m", "--data-dir", filepath.Join(changes, ".data")}, extra...)
	return start(t, url, bin.runner, args...)
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(within):
		t.Fatalf("process did not exit within %s:\n%s", within, p.out.String())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// eventually polls cond until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// changeTree waits until the runner pid has at least the processes a
// journalScript change runs — its supervisor, sh and the beating subshell
// (the journal's "start" comes just before the subshell forks) — and
// returns them, supervisor first.
func changeTree(t *testing.T, pid int) []int {
	t.Helper()
	var pids []int
	eventually(t, 5*time.Second, "the change's processes start", func() bool {
		pids = proctest.Tree(pid)
		return len(pids) >= 3
	})
	return pids
}

// changeFile writes one change file.
func changeFile(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// journal is where a change's script logs its life: "start", "beat"
// (every 50 ms from a background process of the change, so the last beat
// is within 50 ms of its death), "end", each with the execution id, the
// lock token and the time in nanoseconds.
const journalScript = `j="$JOURNAL"
log() { echo "$1 $AUDITFLOW_EXECUTION_ID $AUDITFLOW_LOCK_TOKEN $(date +%s%N)" >> "$j"; }
log start
( while :; do log beat; sleep 0.05; done ) &
`

// entry is one journal line.
type entry struct {
	what, exec string
	token      uint64
	at         time.Time
}

func readJournal(t *testing.T, path string) []entry {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []entry
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue // a line cut by a kill
		}
		tok, _ := strconv.ParseUint(f[2], 10, 64)
		ns, _ := strconv.ParseInt(f[3], 10, 64)
		out = append(out, entry{f[0], f[1], tok, time.Unix(0, ns)})
	}
	return out
}

// span is one execution's life as its journal shows it.
type span struct {
	exec       string
	token      uint64
	start, end time.Time // end: its last sign of life
	ended      bool      // it wrote "end"
}

func spans(es []entry) []span {
	byExec := map[string]*span{}
	var order []string
	for _, e := range es {
		s, ok := byExec[e.exec]
		if !ok {
			s = &span{exec: e.exec, token: e.token, start: e.at}
			byExec[e.exec] = s
			order = append(order, e.exec)
		}
		s.end = e.at
		if e.what == "end" {
			s.ended = true
		}
	}
	out := make([]span, len(order))
	for i, id := range order {
		out[i] = *byExec[id]
	}
	return out
}

// overlaps returns the pairs of executions whose lives overlapped.
func overlaps(ss []span) []string {
	var out []string
	for i := range ss {
		for j := i + 1; j < len(ss); j++ {
			a, b := ss[i], ss[j]
			if a.start.Before(b.end) && b.start.Before(a.end) {
				out = append(out, fmt.Sprintf("%s (token %d, %s–%s) and %s (token %d, %s–%s)",
					a.exec, a.token, a.start.Format("15:04:05.000"), a.end.Format("15:04:05.000"),
					b.exec, b.token, b.start.Format("15:04:05.000"), b.end.Format("15:04:05.000")))
			}
		}
	}
	return out
}

// history reads a change's events from the stream, oldest first.
func history(t *testing.T, js jetstream.JetStream, pipeline, change string) []events.Event {
	t.Helper()
	var out []events.Event
	for _, e := range natstest.ReadEvents(t, js, producer.DefaultStreamName, events.Subject(events.DefaultSubjectPrefix, pipeline, change)) {
		out = append(out, e.Event)
	}
	return out
}

func typesOf(es []events.Event) []events.Type {
	out := make([]events.Type, len(es))
	for i, e := range es {
		out[i] = e.Type
	}
	return out
}

// project runs a projector into a new SQLite store until it has caught up
// with the stream, and returns the store.
func project(t *testing.T, js jetstream.JetStream) (*sqlitestore.Store, string) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "audit.db")
	st, err := sqlitestore.Open(ctx, path, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	p, err := projector.New(ctx, js, st, projector.Config{StoreName: "sqlite", Consumer: "faulttest-" + strconv.Itoa(int(time.Now().UnixNano()%1e9))})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(rctx) }()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	err = p.WaitCaughtUp(wctx)
	cancel()
	<-done
	if err != nil {
		t.Fatal(err)
	}
	return st, path
}

func issue(t *testing.T, st stores.Store, pipeline, change string) stores.Issue {
	t.Helper()
	is, err := st.Issues(context.Background(), stores.IssueQuery{Pipeline: pipeline, ChangeID: change})
	if err != nil || len(is) != 1 {
		t.Fatalf("issue %s/%s: %v %v", pipeline, change, is, err)
	}
	return is[0]
}

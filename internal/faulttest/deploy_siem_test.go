//go:build unix

package faulttest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/producer"
)

// feedProc is auditflow feed (or export --format ndjson) as a process:
// its lines on stdout, kept apart from its log on stderr.
type feedProc struct {
	cmd      *exec.Cmd
	out, log *proctest.Buffer
	done     chan struct{}
}

// startFeed runs bin.auditflow with args as the NATS URL's user, logging
// at debug level (where a permission violation a request shrugs off is
// logged too).
func startFeed(t *testing.T, url string, args ...string) *feedProc {
	t.Helper()
	p := &feedProc{cmd: exec.Command(bin.auditflow, args...), out: &proctest.Buffer{}, log: &proctest.Buffer{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "AUDITFLOW_NATS_URL="+url, "AUDITFLOW_LOG_LEVEL=debug")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("auditflow %v log:\n%s", args, p.log.String())
		}
	})
	return p
}

// exit waits for the process and returns its exit code.
func (p *feedProc) exit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		t.Fatalf("auditflow %v still runs after %s:\n%s", p.cmd.Args[1:], within, p.log.String())
		return -1
	}
}

// seqs are the auditflowseq of the lines written so far (a line not yet
// ended by its newline is not one), and fails on a line whose auditflowchain
// says the event does not extend its change's chain: the feed judged its
// place wrongly (it needs what precedes it, from the stream, after a
// restart).
func (p *feedProc) seqs(t *testing.T) []uint64 {
	t.Helper()
	out := p.out.String()
	var seqs []uint64
	for l := range strings.Lines(out[:strings.LastIndexByte(out, '\n')+1]) {
		var line struct {
			Seq   uint64 `json:"auditflowseq"`
			Chain string `json:"auditflowchain"`
		}
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("not a JSON line (%v): %s", err, l)
		}
		if line.Chain != "" {
			t.Errorf("sequence %d: auditflowchain %q, want \"\" (the runner's events extend their chains)", line.Seq, line.Chain)
		}
		seqs = append(seqs, line.Seq)
	}
	return seqs
}

// publishRun publishes, as the producer's user, a run of change id of
// the deployment's pipeline, started and succeeded, and returns how many
// events that is.
func publishRun(t *testing.T, prod *producer.Producer, id string) int {
	t.Helper()
	s := events.New(events.ExecutionStarted, deployPipeline, id)
	s.ExecutionID = events.NewID()
	end := events.New(events.ExecutionSucceeded, deployPipeline, id)
	end.ExecutionID = s.ExecutionID
	for _, e := range []events.Event{s, end} {
		if _, err := prod.Publish(context.Background(), e); err != nil {
			t.Fatalf("publish as %s: %v", roleRunner, err)
		}
	}
	return 2
}

// TestDeploySIEMFeedAsSIEM runs the SIEM feed as the siem user of the
// deployment's NATS configuration, with its own password, as processes:
// without --follow (feed, and export --format ndjson) it writes the whole
// stream; with --follow it writes events as they come, and run again after
// a stop it continues after the last line written — no line twice, none
// missing — judging each event's place in its chain from the stream. No
// run meets a permission violation, and the role's every right is used.
// Another durable than siem is refused at once, naming the subject the
// role lacks. (What the role may not do: TestDeployDenials and
// TestDeployPermissionMatrix.)
func TestDeploySIEMFeedAsSIEM(t *testing.T) {
	d := startDeployment(t, nil)
	initAuditflow(t, d.url(roleAdmin))
	ctx := context.Background()
	_, rjs := d.connect(t, roleRunner)
	prod, err := producer.New(ctx, rjs, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	published := 0
	// publish records n changes of the runner's pipeline, each started and
	// succeeded (a chain of two).
	publish := func(tag string, n int) {
		t.Helper()
		for i := range n {
			published += publishRun(t, prod, fmt.Sprintf("%s-%d", tag, i))
		}
	}
	publish("0001-before", 3)

	rec := d.recordPublishes()
	var runs []*feedProc // none may meet a permission violation
	t.Cleanup(func() {
		for _, p := range runs {
			if strings.Contains(strings.ToLower(p.log.String()), "permissions violation") {
				t.Errorf("auditflow %v as %s met a permission violation:\n%s", p.cmd.Args[1:], roleSIEM, p.log.String())
			}
		}
	})
	feed := func(args ...string) *feedProc {
		p := startFeed(t, d.url(roleSIEM), args...)
		runs = append(runs, p)
		return p
	}
	// consecutive fails unless seqs are from, from+1, … to.
	consecutive := func(what string, seqs []uint64, from, to int) {
		t.Helper()
		ok := len(seqs) == to-from+1
		for i := 0; ok && i < len(seqs); i++ {
			ok = seqs[i] == uint64(from+i)
		}
		if !ok {
			t.Fatalf("%s wrote sequences %v, want %d to %d, each once", what, seqs, from, to)
		}
	}

	for _, args := range [][]string{{"feed"}, {"export", "--format", "ndjson"}} {
		p := feed(args...)
		if code := p.exit(t, 60*time.Second); code != 0 {
			t.Fatalf("auditflow %v as %s: exit %d\n%s", args, roleSIEM, code, p.log.String())
		}
		consecutive(strings.Join(args, " "), p.seqs(t), 1, published)
	}

	// follow runs feed --follow until it has written to's line, and stops
	// it as an operator would (SIGTERM), checking it wrote from to to.
	follow := func(from int, meanwhile func()) {
		t.Helper()
		p := feed("feed", "--follow")
		eventually(t, 30*time.Second, fmt.Sprintf("the feed writes sequences %d to %d", from, published), func() bool {
			return len(p.seqs(t)) >= published-from+1
		})
		if meanwhile != nil {
			meanwhile()
			eventually(t, 30*time.Second, fmt.Sprintf("the feed writes what is published while it runs, up to %d", published), func() bool {
				return len(p.seqs(t)) >= published-from+1
			})
		}
		time.Sleep(300 * time.Millisecond) // a line more, if it were to write one
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := p.exit(t, 30*time.Second); code != 0 {
			t.Fatalf("feed --follow as %s: exit %d after SIGTERM\n%s", roleSIEM, code, p.log.String())
		}
		consecutive("feed --follow", p.seqs(t), from, published)
	}
	follow(1, nil)
	next := published + 1
	publish("0002-stopped", 2) // while no feed runs
	follow(next, func() { publish("0003-live", 2) })

	// Least privilege: the feed used every right the role gives.
	if unused := rec.unused(roleSIEM, d.permissions(t, roleSIEM).Publish.Allow); len(unused) > 0 {
		t.Errorf("the siem role allows publishing to %q, which the feed did not use", unused)
	}

	// A durable the role does not name is refused at once, with the
	// subject to add to accounts.conf (not after a request's timeout, nor
	// tried again for ever).
	other := feed("feed", "--follow", "--consumer", "siem-other")
	runs = runs[:len(runs)-1] // its violation is the point
	start := time.Now()
	if code := other.exit(t, 30*time.Second); code == 0 || !strings.Contains(other.log.String(), `may not publish to "$JS.API.CONSUMER.INFO.AUDIT.siem-other"`) {
		t.Fatalf("feed --follow --consumer siem-other as %s: exit %d, want an error naming $JS.API.CONSUMER.INFO.AUDIT.siem-other:\n%s",
			roleSIEM, code, other.log.String())
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("feed --follow --consumer siem-other refused after %s: a missing right must not wait out a timeout", took.Round(time.Millisecond))
	}
}

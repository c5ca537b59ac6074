package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/bundle"
	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/trust"
)

// TestBundleFromClusterAfterLeaderKillAndRestore: on a 3-node cluster set
// up by auditflow init (an R3 AUDIT stream and its R3 mirror), signed,
// chained events of several changes — applied, failed, failed and resolved
// by an operator, and one retried across a kill of the stream's leader —
// are exported from the surviving nodes and verify-bundle, in a fresh
// directory with only the bundle and the trust list, exits 0 counting
// every event published. Then the stream is deleted and auditflow restore
// brings it back from the mirror: a second export verifies too, with every
// event at its sequence, with its subject, bytes and signature, and each
// change's chain (first and last sequence, head hash) unchanged.
func TestBundleFromClusterAfterLeaderKillAndRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster, a leader kill and a restore; takes 20-50 s")
	}
	const (
		stream   = producer.DefaultStreamName
		mirror   = "AUDIT_MIRROR"
		pipeline = "billing"
	)
	ctx := context.Background()
	c := natstest.StartCluster(t, 3)
	began := time.Now()
	phase := func(what string) { t.Logf("%6.1fs  %s", time.Since(began).Seconds(), what) }
	work := t.TempDir()
	t.Chdir(work) // no .auditflow here: the commands talk to the cluster
	cmd := func(urls string, args ...string) (int, string, string) {
		t.Helper()
		return auditflow(t, append([]string{"--nats-url", urls, "--stream-replicas", "3"}, args...)...)
	}
	if code, out, errOut := cmd(c.URLs(), "init", "--mirror", mirror, "--wait", "30s"); code != cli.ExitOK {
		t.Fatalf("init --mirror: exit %d\n%s\n%s", code, out, errOut)
	}

	runnerKey, operatorKey := trusttest.NewSigner(t), trusttest.NewSigner(t)
	list, err := trust.NewList(
		trust.Key{Key: runnerKey.PublicKey(), Name: "runner-1", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{pipeline}},
		trust.Key{Key: operatorKey.PublicKey(), Name: "alice", Roles: []trust.Role{trust.RoleOperator}, Pipelines: []string{trust.AllPipelines}},
	)
	if err != nil {
		t.Fatal(err)
	}
	trustFile := trusttest.WriteList(t, work, list)
	signingKey := trusttest.WriteKey(t, work, operatorKey)

	_, js := c.Connect(t)
	sc := producer.StreamConfig{Replicas: 3}
	newProducer := func(s *trust.Signer) *producer.Producer {
		t.Helper()
		p, err := producer.New(ctx, js, producer.Config{Stream: sc, Signer: s, RetryFor: 60 * time.Second, Logger: natstest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	runnerP, operatorP := newProducer(runnerKey), newProducer(operatorKey)
	// A real fencing token, as a runner holding the pipeline's lock writes
	// it: restore checks the lock bucket hands out tokens above it.
	locker, err := lock.New(ctx, js, lock.Config{Owner: "runner-1"})
	if err != nil {
		t.Fatal(err)
	}
	lease, err := locker.TryAcquire(ctx, pipeline)
	if err != nil {
		t.Fatal(err)
	}
	token := lease.Token()
	if err := lease.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// published is every event acknowledged, by stream sequence.
	var mu sync.Mutex // guards published, which the writer goroutine below adds to
	published := map[uint64]producer.Head{}
	publish := func(p *producer.Producer, e events.Event, after producer.Head) (producer.Head, error) {
		h, err := p.Publish(ctx, e, producer.After(after))
		if err == nil {
			mu.Lock()
			published[h.Seq] = h
			mu.Unlock()
		}
		return h, err
	}
	execution := func(typ events.Type, change, execID string) events.Event {
		e := events.New(typ, pipeline, change)
		e.ExecutionID, e.RunnerID, e.Host, e.LockToken = execID, "runner-1", "deploy-1", token
		if typ == events.ExecutionFailed {
			e.ErrorMessage = "deadlock detected"
		}
		return e
	}
	run := func(change string, outcome events.Type) producer.Head {
		t.Helper()
		id := events.NewID()
		h, err := publish(runnerP, execution(events.ExecutionStarted, change, id), producer.Head{})
		if err != nil {
			t.Fatal(err)
		}
		if h, err = publish(runnerP, execution(outcome, change, id), h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	run("0001-create-schema", events.ExecutionSucceeded)
	run("0002-add-index", events.ExecutionSucceeded)
	run("0003-backfill", events.ExecutionFailed)
	failed := run("0004-enable-flag", events.ExecutionFailed)
	resolution := events.New(events.ManuallyResolved, pipeline, "0004-enable-flag")
	resolution.Resolution, resolution.Operator, resolution.Reason = events.ResolvedApplied, "alice", "flag enabled by hand"
	if _, err := publish(operatorP, resolution, failed); err != nil {
		t.Fatal(err)
	}

	// A change retried while the stream's leader is killed: a writer keeps
	// publishing its executions, each guarded by the change's last
	// sequence, and rides out the election.
	const retried = "0005-rotate-keys"
	var acked atomic.Int64
	var writerHeads []producer.Head // the retried change's, in order; the writer's until it stops
	stop := make(chan struct{})
	var writerErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		var head producer.Head
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			typ, id := events.ExecutionStarted, events.NewID()
			if i%2 == 1 {
				typ = events.ExecutionFailed
			}
			e := execution(typ, retried, id)
			e.Recovery = events.AlwaysRetry
			h, err := publish(runnerP, e, head)
			if err != nil {
				writerErr = fmt.Errorf("%s event %d (%s): %w", retried, i, typ, err)
				return
			}
			head, writerHeads = h, append(writerHeads, h)
			acked.Add(1)
			time.Sleep(10 * time.Millisecond) // keep the event count modest
		}
	})
	waitUntil := func(what string, timeout time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not after %s", what, timeout)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitUntil("the writer publishes", 30*time.Second, func() bool { return acked.Load() >= 20 })
	killed := c.WaitStreamLeader(stream, 10*time.Second)
	// The writer's events before index ackedBefore were acknowledged by
	// the old leader; from index ackedAfter+1 on, by a new one (each is
	// published once the one before it is acknowledged, after the kill).
	ackedBefore := acked.Load()
	c.Kill(killed)
	killedAt := time.Now()
	ackedAfter := acked.Load()
	waitUntil("a new leader accepts writes", 90*time.Second, func() bool { return acked.Load() >= ackedAfter+10 })
	close(stop)
	wg.Wait()
	if writerErr != nil {
		t.Fatal(writerErr)
	}
	newLeader := c.StreamLeader(stream)
	t.Logf("killed the %s leader, node %d, after %d events of %s; %d more were acknowledged by node %d within %s",
		stream, killed, ackedBefore, retried, acked.Load()-ackedAfter, newLeader, time.Since(killedAt).Round(10*time.Millisecond))
	if newLeader == killed {
		t.Fatalf("node %d, killed, leads %s", killed, stream)
	}
	// The change's chain spans the leader change.
	oldLeaderHead, newLeaderHead := writerHeads[ackedBefore-1], writerHeads[ackedAfter+1]

	total := len(published)
	seqs := make([]uint64, 0, total)
	for s := range published {
		seqs = append(seqs, s)
	}
	slices.Sort(seqs)

	var survivors []string
	for i := range c.Size() {
		if s := c.Server(i); s != nil {
			survivors = append(survivors, s.ClientURL())
		}
	}
	export := func(urls, name string) (string, bundle.Manifest) {
		t.Helper()
		out := filepath.Join(work, name)
		start := time.Now()
		code, stdout, stderr := cmd(urls, "--json", "--log-level", "info", "export", "--out", out, "--trust", trustFile, "--signing-key", signingKey)
		if code != cli.ExitOK {
			t.Fatalf("export %s: exit %d\n%s\n%s", name, code, stdout, stderr)
		}
		t.Logf("export %s took %s %s", name, time.Since(start).Round(time.Millisecond), stderr) // its log, at info
		var m bundle.Manifest
		if err := json.Unmarshal([]byte(stdout), &m); err != nil {
			t.Fatalf("export %s --json: %v\n%s", name, err, stdout)
		}
		return out, m
	}
	// verifyBundle checks the bundle as an auditor would: in a fresh
	// directory holding only it and the trust list handed over apart.
	verifyBundle := func(path string) bundle.Result {
		t.Helper()
		dir := t.TempDir()
		for _, f := range []string{path, trustFile} {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Chdir(dir)
		defer t.Chdir(work)
		code, stdout, stderr := auditflow(t, "verify-bundle", filepath.Base(path), "--trust", filepath.Base(trustFile), "--json")
		var res bundle.Result
		if err := json.Unmarshal([]byte(stdout), &res); err != nil {
			t.Fatalf("verify-bundle %s --json: exit %d, %v\n%s\n%s", path, code, err, stdout, stderr)
		}
		if code != cli.ExitOK || len(res.Problems) != 0 {
			t.Errorf("verify-bundle %s: exit %d, want %d; problems:", filepath.Base(path), code, cli.ExitOK)
			for _, p := range res.Problems {
				t.Errorf("  %s", p)
			}
		}
		// The independent reader agrees, where python3 is at hand.
		if python, err := exec.LookPath("python3"); err == nil {
			out, err := exec.Command(python, bundleReader, path).CombinedOutput()
			if want := fmt.Sprintf("%d events of %d changes, 0 broken links", res.Events, res.Changes); err != nil || !strings.Contains(string(out), want) {
				t.Errorf("tools/bundle-reader.py %s: %v, want %q\n%s", filepath.Base(path), err, want, out)
			}
		}
		return res
	}
	linesOf := func(path string) []bundle.Line {
		t.Helper()
		return lines(t, members(t, path))
	}

	phase("export from the surviving nodes")
	first, m1 := export(strings.Join(survivors, ","), "a.tar.gz")
	res := verifyBundle(first)
	if res.Events != total || m1.Events != total || res.Changes != 5 {
		t.Fatalf("first bundle: verify-bundle counts %d events of %d changes, the manifest %d; %d were published", res.Events, res.Changes, m1.Events, total)
	}
	lines1 := linesOf(first)
	for i, l := range lines1 {
		h := published[l.Seq]
		if l.Seq != seqs[i] || events.Hash(l.Data) != h.Hash || header(l.Headers, trust.Header) != h.Signature {
			t.Fatalf("first bundle line %d: sequence %d, hash %s, signature %q; published sequence %d, hash %s, signature %q",
				i, l.Seq, events.Hash(l.Data), header(l.Headers, trust.Header), seqs[i], h.Hash, h.Signature)
		}
	}
	checkChain(t, lines1, retried, writerHeads, oldLeaderHead, newLeaderHead)
	if t.Failed() {
		t.FailNow()
	}

	// The mirror copies the stream through a durable consumer on it
	// (producer.MirrorConsumerConfig), which survives the leader change:
	// it catches up within a second of the new leader's first write
	// (TestMirrorCopiesOnAfterLeaderChange measures it). An ephemeral one
	// stalled 10 s to 2 minutes. Requests may time out while the cluster
	// settles: ask again, each time with a short deadline.
	last := seqs[len(seqs)-1]
	phase("wait for the mirror")
	var mirrored uint64
	waitUntil("the mirror holds every event", 30*time.Second, func() bool {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		ms, err := js.Stream(rctx, mirror)
		if err != nil {
			t.Logf("mirror: %v", err)
			return false
		}
		if st := ms.CachedInfo().State; st.LastSeq != mirrored {
			mirrored = st.LastSeq
			t.Logf("the mirror holds sequences %d..%d (%d messages), %s after the kill", st.FirstSeq, st.LastSeq, st.Msgs, time.Since(killedAt).Round(10*time.Millisecond))
		}
		st := ms.CachedInfo().State
		return st.Msgs == uint64(total) && st.LastSeq == last
	})

	// The disaster, later, once the killed node is back: the audit stream
	// is deleted (the right to do it is an admin's, as in the restore
	// tests), and auditflow restore recreates it from the mirror.
	phase("restart the killed node")
	c.Restart(killed)
	phase("delete the stream")
	waitUntil("the stream is deleted", 30*time.Second, func() bool {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		err := js.DeleteStream(rctx, stream)
		if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Logf("delete %s: %v", stream, err)
		}
		return err == nil || errors.Is(err, jetstream.ErrStreamNotFound) // an earlier attempt, answered too late, did it
	})
	phase("restore")
	code, out, errOut := cmd(c.URLs(), "--json", "restore", "--from", mirror, "--timeout", "2m")
	if code != cli.ExitOK {
		t.Fatalf("restore --from %s: exit %d\n%s\n%s", mirror, code, out, errOut)
	}
	var restored struct {
		Messages, FirstSeq, LastSeq, HighestLockToken uint64
	}
	if err := json.Unmarshal([]byte(out), &restored); err != nil || restored.Messages != uint64(total) || restored.FirstSeq != 1 ||
		restored.LastSeq != last || restored.HighestLockToken != token {
		t.Fatalf("restore reports %+v (%v), want %d messages, sequences 1..%d, highest lock token %d:\n%s", restored, err, total, last, token, out)
	}

	phase("export after the restore")
	second, m2 := export(c.URLs(), "b.tar.gz")
	res = verifyBundle(second)
	if res.Events != total || m2.Events != total || res.Changes != 5 {
		t.Fatalf("bundle after the restore: verify-bundle counts %d events of %d changes, the manifest %d; %d were published", res.Events, res.Changes, m2.Events, total)
	}
	// What an auditor relies on across the restore: each event at its
	// sequence, with its subject, exact bytes and signature, so each
	// change's chain and head are the same.
	phase("verified")
	lines2 := linesOf(second)
	headersChanged := map[string]int{}
	for i, l := range lines2 {
		was := lines1[i]
		if l.Seq != was.Seq || l.Subject != was.Subject || !bytes.Equal(l.Data, was.Data) || l.Context != was.Context ||
			header(l.Headers, trust.Header) != header(was.Headers, trust.Header) {
			t.Fatalf("after the restore, line %d is sequence %d %s (hash %s, signature %q); before it, sequence %d %s (hash %s, signature %q)",
				i, l.Seq, l.Subject, events.Hash(l.Data), header(l.Headers, trust.Header), was.Seq, was.Subject, events.Hash(was.Data), header(was.Headers, trust.Header))
		}
		for _, k := range changedHeaders(was.Headers, l.Headers) {
			headersChanged[k]++
		}
	}
	checkChain(t, lines2, retried, writerHeads, oldLeaderHead, newLeaderHead)
	if !slices.EqualFunc(m1.Changes, m2.Changes, func(a, b bundle.Change) bool { return a == b }) || m1.FirstSeq != m2.FirstSeq || m1.LastSeq != m2.LastSeq {
		t.Errorf("the manifests' changes differ across the restore:\n%+v\n%+v", m1.Changes, m2.Changes)
	}
	// The producer's own headers are history; those the server adds or
	// drops when it copies a message (Nats-*) are not.
	for k, n := range headersChanged {
		if !strings.HasPrefix(strings.ToLower(k), "nats-") || strings.EqualFold(k, "Nats-Msg-Id") {
			t.Errorf("header %s differs on %d events across the restore", k, n)
		}
	}
	t.Logf("sequence %d's headers before the restore: %v; after it: %v", lines1[0].Seq, lines1[0].Headers, lines2[0].Headers)
	t.Logf("%d events of 5 changes, sequences 1..%d, verify before and after the restore; headers the restore changed (events): %v", total, last, headersChanged)

	// A runner started after the restore continues the retried change's
	// chain where the restored history ends, and the next bundle verifies
	// with that link.
	phase("publish after the restore")
	p, err := producer.New(ctx, js, producer.Config{Stream: sc, Signer: runnerKey, RetryFor: 60 * time.Second, Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	_, head, err := p.Last(ctx, pipeline, retried)
	if err != nil || head != writerHeads[len(writerHeads)-1] {
		t.Fatalf("the retried change's head after the restore: %+v (%v), want %+v", head, err, writerHeads[len(writerHeads)-1])
	}
	next, err := p.Publish(ctx, execution(events.ExecutionSucceeded, retried, events.NewID()), producer.After(head))
	if err != nil {
		t.Fatal(err)
	}
	if next.Seq != last+1 {
		t.Errorf("the first event after the restore is at sequence %d, want %d", next.Seq, last+1)
	}
	third, _ := export(c.URLs(), "c.tar.gz")
	if res := verifyBundle(third); res.Events != total+1 {
		t.Fatalf("bundle after a publish on the restored stream: %d events, want %d", res.Events, total+1)
	}
	checkChain(t, linesOf(third), retried, append(slices.Clone(writerHeads), next), oldLeaderHead, newLeaderHead)
	phase("verified")
}

// checkChain checks that the bundle holds the retried change's events as
// the writer published them, each linked to the one before, across the
// leader change: from old (the old leader's last acknowledged) to new
// (a new leader's).
func checkChain(t *testing.T, lines []bundle.Line, change string, heads []producer.Head, old, new producer.Head) {
	t.Helper()
	var got []bundle.Line
	for _, l := range lines {
		if strings.HasSuffix(l.Subject, "."+change) {
			got = append(got, l)
		}
	}
	if len(got) != len(heads) {
		t.Fatalf("%s: %d events in the bundle, %d published", change, len(got), len(heads))
	}
	sawOld, sawNew := false, false
	for i, l := range got {
		e, err := events.Decode(l.Data)
		if err != nil {
			t.Fatalf("%s sequence %d: %v", change, l.Seq, err)
		}
		want := producer.Head{}
		if i > 0 {
			want = heads[i-1]
		}
		if l.Seq != heads[i].Seq || e.PrevSeq != want.Seq || e.PrevHash != want.Hash || e.Position != uint64(i+1) {
			t.Fatalf("%s event %d: sequence %d after %d (%s) at position %d; published at %d after %d (%s)",
				change, i, l.Seq, e.PrevSeq, e.PrevHash, e.Position, heads[i].Seq, want.Seq, want.Hash)
		}
		sawOld = sawOld || l.Seq == old.Seq
		sawNew = sawNew || (sawOld && l.Seq == new.Seq)
	}
	if !sawNew {
		t.Fatalf("%s: the chain does not run from sequence %d (old leader) to %d (new leader)", change, old.Seq, new.Seq)
	}
}

// changedHeaders names the headers whose values differ between a and b.
func changedHeaders(a, b map[string][]string) []string {
	var out []string
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			out = append(out, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	return out
}

// header is the first value of a message header, by any case of its name.
func header(h map[string][]string, name string) string {
	for k, v := range h {
		if strings.EqualFold(k, name) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

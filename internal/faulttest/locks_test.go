//go:build unix

package faulttest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
)

// TestLocksRunnerRoleCannotEmptyTheBucket: the deployment's runner user may
// write its own pipeline's lock key, and a rollup is a write on a key —
// one that, on a bucket allowing rollups, purged every lock in it, so that
// a waiting runner of another pipeline took that pipeline's live lock. The
// bucket auditflow init makes refuses rollups: the publish fails, and the
// other pipeline's lock and the runner's own are untouched. On a bucket
// allowing rollups (nats.go's CreateKeyValue, what init made before) the
// publish succeeds and the test fails.
func TestLocksRunnerRoleCannotEmptyTheBucket(t *testing.T) {
	d := startDeployment(t, nil)
	initAuditflow(t, d.url(roleAdmin))
	ctx := context.Background()

	// Another pipeline's live lock (held through the operator's user, which
	// may write any lock key), and the runner's own.
	_, opJS := d.connect(t, roleOperator)
	billingLocks, err := lock.New(ctx, opJS, lock.Config{Owner: "billing-runner"})
	if err != nil {
		t.Fatal(err)
	}
	billing, err := billingLocks.TryAcquire(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = billing.Release(context.Background()) })
	_, rjs := d.connect(t, roleRunner)
	ownLocks, err := lock.New(ctx, rjs, lock.Config{Owner: "runner"})
	if err != nil {
		t.Fatal(err)
	}
	own, err := ownLocks.TryAcquire(ctx, deployPipeline)
	if err != nil {
		t.Fatal(err)
	}

	for _, rollup := range []string{"all", "sub"} {
		m := nats.NewMsg("$KV." + lock.DefaultBucket + "." + deployPipeline)
		m.Header.Set("Nats-Rollup", rollup)
		m.Header.Set("KV-Operation", "PURGE")
		_, err := rjs.PublishMsg(ctx, m)
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || !strings.Contains(err.Error(), "rollup not permitted") {
			t.Fatalf("the runner's rollup (%s) on its own lock key: %v, want refused by the bucket", rollup, err)
		}
	}
	// The runner's KV purge of its own key is such a rollup too.
	kv, err := rjs.KeyValue(ctx, lock.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, deployPipeline); err == nil || !strings.Contains(err.Error(), "rollup not permitted") {
		t.Fatalf("the runner's KV purge of its own key: %v, want refused", err)
	}

	h, err := billingLocks.Holder(ctx, "billing")
	if err != nil || h.Owner != "billing-runner" || h.Token != billing.Token() || !billing.Valid() {
		t.Fatalf("billing's lock after the runner's rollups: %+v %v", h, err)
	}
	waiting, err := lock.New(ctx, opJS, lock.Config{Owner: "waiting-billing-runner"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := waiting.TryAcquire(ctx, "billing"); !errors.Is(err, lock.ErrHeld) {
		t.Fatalf("a waiting billing runner after the rollups: %v, want ErrHeld", err)
	}
	if h, err := ownLocks.Holder(ctx, deployPipeline); err != nil || h.Token != own.Token() || !own.Valid() {
		t.Fatalf("the runner's own lock after its rollups: %+v %v", h, err)
	}
	if err := own.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestLocksForceReleaseOfALiveHolder runs auditflow lock release against a
// holder that refreshes its lock: without --revision, release watches it
// for a refresh interval, sees it refresh, removes nothing and exits 5
// naming it (owner, token, revision); with a --revision it has refreshed
// past, release exits 5 and prints why, not nothing. With the current
// --revision it removes the lock, and the holder's LostCause says it was
// force-released and by whom. A holder that does not refresh (its
// connection is gone) is removed without --revision.
//
// Without the watch the first release removes the live holder (exit 0);
// with the refusal's error swallowed the output does not name the holder.
func TestLocksForceReleaseOfALiveHolder(t *testing.T) {
	srv := startServer(t)
	initAuditflow(t, srv.URL) // lease 3s: a refresh every second
	ctx := context.Background()
	_, js := natstest.ConnectURL(t, srv.URL)
	holder, err := lock.New(ctx, js, lock.Config{Owner: "runner-7@host-a", Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	live, err := holder.TryAcquire(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.Release(context.Background()) })
	seen, err := holder.Holder(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	release := func(args ...string) (int, string) {
		p := start(t, srv.URL, bin.auditflow, append([]string{"lock", "release", "-p"}, args...)...)
		code := p.wait(t, 30*time.Second)
		return code, p.out.String()
	}

	code, out := release("billing", "--force")
	if code != 5 {
		t.Fatalf("release of a live holder without --revision: exit %d, want 5\n%s", code, out)
	}
	for _, want := range []string{"runner-7@host-a", fmt.Sprintf("token %d", live.Token()), fmt.Sprintf("revision %d", seen.Revision), "is alive", "nothing was removed"} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal does not say %q:\n%s", want, out)
		}
	}
	if !live.Valid() {
		t.Fatalf("the live holder lost its lease to a refused release: %v", live.LostCause())
	}

	// seen.Revision is stale now: the holder refreshed while watched.
	code, out = release("billing", "--force", "--revision", strconv.FormatUint(seen.Revision, 10))
	if code != 5 || !strings.Contains(out, "refreshed by its holder") || !strings.Contains(out, "runner-7@host-a") || !strings.Contains(out, "nothing was removed") {
		t.Fatalf("release at a stale revision: exit %d, want 5 saying why\n%s", code, out)
	}
	if !live.Valid() {
		t.Fatal("the live holder lost its lease to a stale release")
	}

	// At its current revision (race the refresh: try again if it moved).
	for {
		cur, err := holder.Holder(ctx, "billing")
		if err != nil {
			t.Fatal(err)
		}
		if code, out = release("billing", "--force", "--revision", strconv.FormatUint(cur.Revision, 10)); code != 5 {
			break
		}
	}
	if code != 0 || !regexp.MustCompile(`released the lock of pipeline billing \(holder runner-7@host-a`).MatchString(out) {
		t.Fatalf("release at the current revision: exit %d\n%s", code, out)
	}
	select {
	case <-live.Lost():
	case <-time.After(lease):
		t.Fatal("the released holder did not notice")
	}
	var lost *lock.LostError
	if !errors.As(live.LostCause(), &lost) || lost.Kind != lock.LostForceReleased || !strings.HasPrefix(lost.By, "auditflow-cli") {
		t.Fatalf("LostCause = %v, want force-released by auditflow-cli…", live.LostCause())
	}

	// A holder that stopped refreshing: removed without --revision.
	nc, deadJS := natstest.ConnectURL(t, srv.URL)
	deadLocks, err := lock.New(ctx, deadJS, lock.Config{Owner: "dead-runner"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := deadLocks.TryAcquire(ctx, "shipping"); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if code, out := release("shipping", "--force"); code != 0 || !strings.Contains(out, "dead-runner") {
		t.Fatalf("release of a holder that does not refresh: exit %d\n%s", code, out)
	}
	if code, out := release("shipping", "--force"); code != 4 {
		t.Fatalf("release of a free lock: exit %d, want 4\n%s", code, out)
	}
}

// TestLocksInitRecreatesTheBucketAboveTheStream: a runner runs (its events
// carry its fencing tokens), the lock bucket is deleted, and auditflow init
// creates it again: it says so, with the first token and the stream's
// highest, waits a lease first (a holder of the deleted bucket may act
// until then), and the next lock's token is above every token on the
// stream, so that a target fencing on tokens accepts the next runner's
// writes. Without the floor the next token is 1; without the wait init
// returns at once.
func TestLocksInitRecreatesTheBucketAboveTheStream(t *testing.T) {
	srv := startServer(t)
	initAuditflow(t, srv.URL)
	ctx := context.Background()
	dir := t.TempDir()
	changeFile(t, dir, "1.yaml", "id: 0001-a\norder: '1'\napply: 'true'\n")
	changeFile(t, dir, "2.yaml", "id: 0002-b\norder: '2'\napply: 'true'\n")
	// Lock history beyond the runner's: revisions the stream never saw.
	l, err := lock.New(ctx, srv.JS, lock.Config{Owner: "busy"})
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		ls, err := l.TryAcquire(ctx, "other")
		if err != nil {
			t.Fatal(err)
		}
		_ = ls.Release(ctx)
	}
	if r := runner(t, srv.URL, dir, "billing", "runner-a"); r.wait(t, time.Minute) != 0 {
		t.Fatalf("run:\n%s", r.out.String())
	}
	var highest uint64
	for _, c := range []string{"0001-a", "0002-b"} {
		for _, e := range history(t, srv.JS, "billing", c) {
			highest = max(highest, e.LockToken)
		}
	}
	if highest == 0 {
		t.Fatal("no lock token on the stream")
	}
	if err := srv.JS.DeleteKeyValue(ctx, lock.DefaultBucket); err != nil {
		t.Fatal(err)
	}

	started := time.Now()
	p := start(t, srv.URL, bin.auditflow, "init", "--lock-lease", lease.String())
	if code := p.wait(t, time.Minute); code != 0 {
		t.Fatalf("init after the bucket was deleted: exit %d\n%s", code, p.out.String())
	}
	took := time.Since(started)
	out := p.out.String()
	want := fmt.Sprintf("fencing tokens start at %d, above the highest on the stream (%d)", highest+1, highest)
	if !strings.Contains(out, want) || !strings.Contains(out, "waiting the lease") {
		t.Fatalf("init does not say %q, or that it waits:\n%s", want, out)
	}
	if took < lease {
		t.Fatalf("init created the bucket again %s after the deletion, before a lease (%s): a holder of the deleted bucket may still act", took, lease)
	}
	next, err := lock.New(ctx, srv.JS, lock.Config{Owner: "next"})
	if err != nil {
		t.Fatal(err)
	}
	ls, err := next.TryAcquire(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ls.Release(ctx) }()
	if ls.Token() <= highest {
		t.Fatalf("the next token is %d, not above the highest on the stream (%d): a fencing target would refuse every later write", ls.Token(), highest)
	}
	t.Logf("highest token on the stream %d; init took %s; next token %d; init said:\n%s", highest, took.Round(time.Millisecond), ls.Token(), out)
}

// TestLocksEmbeddedModeRecreatesTheBucketAboveTheStream: the embedded mode
// creates the lock bucket itself; after it was deleted from the data
// directory's server, the next runner --embedded creates it again a lease
// later, above the tokens its earlier runs recorded.
func TestLocksEmbeddedModeRecreatesTheBucketAboveTheStream(t *testing.T) {
	const embeddedLease = time.Second
	data, changes := t.TempDir(), t.TempDir()
	changeFile(t, changes, "1.yaml", "id: 0001-a\norder: '1'\napply: 'true'\n")
	run := func() *proc {
		return start(t, "", bin.runner, "--embedded", "--changes", changes, "--data-dir", data, "--lock-lease", embeddedLease.String())
	}
	if p := run(); p.wait(t, time.Minute) != 0 {
		t.Fatalf("first run:\n%s", p.out.String())
	}
	// The data directory's server, opened by the test between runs.
	open := func() (jetstream.JetStream, func()) {
		s, err := embedded.Start(embedded.Config{DataDir: filepath.Join(data, "nats"), Logger: natstest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		nc, err := s.Connect("test")
		if err != nil {
			t.Fatal(err)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js, func() { nc.Close(); s.Close() }
	}
	js, closeServer := open()
	first := history(t, js, "default", "0001-a")
	if len(first) == 0 || first[0].LockToken == 0 {
		t.Fatalf("first run's events: %+v", first)
	}
	if err := js.DeleteKeyValue(context.Background(), lock.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	closeServer()

	changeFile(t, changes, "2.yaml", "id: 0002-b\norder: '2'\napply: 'true'\n")
	started := time.Now()
	if p := run(); p.wait(t, time.Minute) != 0 {
		t.Fatalf("second run:\n%s", p.out.String())
	}
	if took := time.Since(started); took < embeddedLease {
		t.Fatalf("the second run took %s, less than a lease: it created the bucket again without waiting", took)
	}
	js, closeServer = open()
	defer closeServer()
	second := history(t, js, "default", "0002-b")
	if len(second) == 0 || second[0].LockToken <= first[len(first)-1].LockToken {
		t.Fatalf("tokens %d then %d: not above the stream's after the bucket was created again", first[len(first)-1].LockToken, second[0].LockToken)
	}
}

// TestLocksInitReportsAnOldBucket: a lock bucket made before auditflow
// refused rollups and purges (nats.go's CreateKeyValue, or nats kv add)
// stops runners with an error naming auditflow init; init reports what
// differs (exit 3: allow rollup, deny purge, each expected and actual)
// and the break-glass way to change it, and changes nothing — with
// --dry-run or not: a deployment denies every role the edit. After the
// edit (made here as a user allowed to), init finds the bucket as it
// makes it, runners take locks again, and the lock held in it stays.
func TestLocksInitReportsAnOldBucket(t *testing.T) {
	srv := startServer(t)
	ctx := context.Background()
	if _, err := producer.EnsureStream(ctx, srv.JS, producer.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	kv, err := srv.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: lock.DefaultBucket, History: 1, TTL: lease})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Create(ctx, "billing", []byte(`{"name":"billing","owner":"old-runner","token":1}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := lock.New(ctx, srv.JS, lock.Config{}); !errors.Is(err, lock.ErrUnsafeBucket) || !strings.Contains(err.Error(), "auditflow init") {
		t.Fatalf("a runner over the old bucket: %v, want ErrUnsafeBucket naming auditflow init", err)
	}
	reported := regexp.MustCompile(`lock bucket\s+auditflow_locks\s+differs\s+deny purge: expected true, actual false; allow rollup: expected false, actual true`)
	for _, args := range [][]string{{"init", "--dry-run"}, {"init"}} {
		p := start(t, srv.URL, bin.auditflow, args...)
		if code := p.wait(t, 30*time.Second); code != 3 || !reported.MatchString(p.out.String()) || !strings.Contains(p.out.String(), "break-glass") {
			t.Fatalf("%v over the old bucket: exit %d, want 3 naming each difference and break-glass\n%s", args, code, p.out.String())
		}
		if _, err := lock.New(ctx, srv.JS, lock.Config{}); !errors.Is(err, lock.ErrUnsafeBucket) {
			t.Fatalf("%v changed the bucket: %v", args, err)
		}
	}
	// The break-glass edit.
	s, err := srv.JS.Stream(ctx, "KV_"+lock.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	cfg.AllowRollup, cfg.DenyPurge, cfg.DenyDelete = false, true, true
	if _, err := srv.JS.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	p := start(t, srv.URL, bin.auditflow, "init")
	if code := p.wait(t, 30*time.Second); code != 0 || !regexp.MustCompile(`lock bucket\s+auditflow_locks\s+exists`).MatchString(p.out.String()) {
		t.Fatalf("init after the edit: exit %d, want the bucket reported as it is\n%s", code, p.out.String())
	}
	l, err := lock.New(ctx, srv.JS, lock.Config{})
	if err != nil {
		t.Fatalf("a runner after the edit: %v", err)
	}
	if h, err := l.Holder(ctx, "billing"); err != nil || h.Owner != "old-runner" {
		t.Fatalf("the old bucket's lock after the edit: %+v %v", h, err)
	}
}

//go:build unix

package faulttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/inspect"
	"github.com/auditflow/auditflow/internal/natsperm"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
	"github.com/auditflow/auditflow/stores/storetest"
	"github.com/auditflow/auditflow/verify"
)

// The deployment's roles, as deploy/nats/accounts.conf names its users.
const (
	roleAdmin      = "admin"
	roleOperator   = "operator"
	roleProjector  = "projector"
	roleRunner     = "runner-example-service" // pipeline example-service only
	roleConsole    = "console"
	roleSIEM       = "siem" // auditflow feed --follow
	deployPipeline = "example-service"
)

// deployment is a nats-server started from deploy/nats/nats.conf, with the
// same accounts, users and permissions as a deployment; only what cannot
// be the same in a test differs: a single node (no routes), a free port
// on 127.0.0.1, no monitoring port, a temporary store, and random
// passwords in the environment.
type deployment struct {
	s    *natsserver.Server
	opts *natsserver.Options
	port int
	pw   map[string]string // user → password
}

// startDeployment copies deploy/nats into a temporary directory, lets edit
// change the copy of nats.conf (to enable TLS, say), and starts a server
// from it.
func startDeployment(t *testing.T, edit func(conf string) string) *deployment {
	t.Helper()
	return startDeploymentWith(t, deployOptions{natsConf: edit})
}

// deployOptions are a test deployment's changes to deploy/nats.
type deployOptions struct {
	natsConf func(conf string) string // edits nats.conf
	// runners are pipelines whose runner role is added beside
	// example-service's, as accounts.conf says to: its block and its user
	// copied with the pipeline's name.
	runners []string
}

// addRunner copies accounts.conf's runner of example-service for pipeline.
func addRunner(t *testing.T, conf, pipeline string) string {
	t.Helper()
	const block = "ROLE_RUNNER_EXAMPLE_SERVICE: {"
	start := strings.Index(conf, block)
	end := strings.Index(conf[start:], "\n}\n")
	user := regexp.MustCompile(`(?m)^\s*\{user: runner-example-service,.*\}$`).FindString(conf)
	if start < 0 || end < 0 || user == "" {
		t.Fatal("accounts.conf: no runner block and user for example-service to copy")
	}
	upper := strings.ToUpper(strings.ReplaceAll(pipeline, "-", "_"))
	copyOf := strings.NewReplacer("example-service", pipeline, "EXAMPLE_SERVICE", upper)
	conf = conf[:start] + copyOf.Replace(conf[start:start+end+3]) + conf[start:]
	return strings.Replace(conf, user, user+"\n"+copyOf.Replace(user), 1)
}

func startDeploymentWith(t *testing.T, o deployOptions) *deployment {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join("..", "..", "deploy", "nats")
	files, err := filepath.Glob(filepath.Join(src, "*.conf"))
	if err != nil || len(files) == 0 {
		t.Fatalf("deploy/nats: %v %v", files, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "nats.conf" && o.natsConf != nil {
			b = []byte(o.natsConf(string(b)))
		}
		if filepath.Base(f) == "accounts.conf" {
			for _, p := range o.runners {
				b = []byte(addRunner(t, string(b), p))
			}
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d := &deployment{pw: map[string]string{}}
	users := []string{roleAdmin, roleOperator, roleProjector, roleRunner, roleConsole, roleSIEM, "sys", "route"}
	for _, p := range o.runners {
		users = append(users, "runner-"+p)
	}
	for _, u := range users {
		d.pw[u] = randomHex(t)
		t.Setenv("AUDITFLOW_"+strings.ToUpper(strings.ReplaceAll(u, "-", "_"))+"_PASSWORD", d.pw[u])
	}
	t.Setenv("NATS_NAME", "deploytest")
	for i := 1; i <= 3; i++ {
		t.Setenv(fmt.Sprintf("AUDITFLOW_ROUTE_%d", i), fmt.Sprintf("nats-route://route:%s@127.0.0.1:1", d.pw["route"]))
	}
	opts, err := natsserver.ProcessConfigFile(filepath.Join(dir, "nats.conf"))
	if err != nil {
		t.Fatalf("deploy/nats/nats.conf: %v", err)
	}
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.HTTPHost, opts.HTTPPort = "", 0
	opts.StoreDir = t.TempDir()
	opts.Cluster, opts.Routes = natsserver.ClusterOpts{}, nil
	opts.NoSigs = true
	s, err := natsserver.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(20 * time.Second) {
		t.Fatal("server not ready")
	}
	d.s, d.opts, d.port = s, opts, s.Addr().(*net.TCPAddr).Port
	return d
}

// permissions are user's permissions in the deployment's configuration.
func (d *deployment) permissions(t *testing.T, user string) *natsserver.Permissions {
	t.Helper()
	for _, u := range d.opts.Users {
		if u.Username == user {
			return u.Permissions
		}
	}
	t.Fatalf("no user %s", user)
	return nil
}

// recordPublishes traces the clients that connect from now on and keeps
// the subjects each user publishes to (the server's own protocol trace:
// what a client sends, whatever library sends it).
func (d *deployment) recordPublishes() *publishes {
	p := &publishes{subjects: map[string]map[string]bool{}}
	d.s.SetLogger(p, false, true)
	return p
}

// publishes is a nats-server Logger that keeps, per user, the subjects
// published to; it drops everything else the server logs.
type publishes struct {
	mu       sync.Mutex
	subjects map[string]map[string]bool // user → subjects
}

// tracePub matches the trace of a client's publish once it is connected:
// `127.0.0.1:38310 - cid:24 - "v1.55.0:go:auditflow-cli" - "AUDITFLOW/user:console" - <<- [PUB subject reply size]`.
var tracePub = regexp.MustCompile(`"[^"/]+/user:([^"]+)" - <<- \[H?PUB (\S+)`)

func (p *publishes) Tracef(format string, v ...any) {
	m := tracePub.FindStringSubmatch(fmt.Sprintf(format, v...))
	if m == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.subjects[m[1]] == nil {
		p.subjects[m[1]] = map[string]bool{}
	}
	p.subjects[m[1]][m[2]] = true
}
func (p *publishes) Noticef(string, ...any) {}
func (p *publishes) Warnf(string, ...any)   {}
func (p *publishes) Fatalf(string, ...any)  {}
func (p *publishes) Errorf(string, ...any)  {}
func (p *publishes) Debugf(string, ...any)  {}

// unused returns the patterns of allow that none of user's subjects
// matched.
func (p *publishes) unused(user string, allow []string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, a := range allow {
		used := false
		for s := range p.subjects[user] {
			used = used || natsserver.SubjectMatchesFilter(s, a)
		}
		if !used {
			out = append(out, a)
		}
	}
	return out
}

// url is the server's URL with user's credentials.
func (d *deployment) url(user string) string {
	return fmt.Sprintf("nats://%s:%s@127.0.0.1:%d", user, d.pw[user], d.port)
}

// connect connects as user, with replies on the user's own inbox prefix
// (as the auditflow commands do: natsconn.Config.Inbox). Permission
// violations go to the connection's last error only (the default handler
// prints them).
func (d *deployment) connect(t *testing.T, user string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return natstest.ConnectURL(t, d.url(user), append([]nats.Option{nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}),
		nats.CustomInboxPrefix("_INBOX." + user)}, opts...)...)
}

func randomHex(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// TestDeployRolesDoTheirJobs runs auditflow init, a runner, a projector and
// the operator CLI as processes, each as its own role's user of the
// deployment's NATS configuration: each does its whole job with the rights
// deploy/nats/accounts.conf gives it, and no more are needed.
func TestDeployRolesDoTheirJobs(t *testing.T) {
	d := startDeployment(t, nil)
	var procs []*proc // none may meet a permission violation, even one it shrugs off
	t.Cleanup(func() {
		for _, p := range procs {
			if out := p.out.String(); strings.Contains(strings.ToLower(out), "permissions violation") {
				t.Errorf("%s %v met a permission violation:\n%s", filepath.Base(p.cmd.Path), p.cmd.Args[1:], out)
			}
		}
	})
	as := func(user, path string, args ...string) *proc {
		p := start(t, d.url(user), path, args...)
		procs = append(procs, p)
		return p
	}
	initAs := func() *proc {
		return as(roleAdmin, bin.auditflow, "init", "--lock-lease", lease.String(), "--mirror", "AUDIT_MIRROR")
	}
	// The stream, its mirror, the lock bucket, verify results and the
	// projector's streams (dead letters, writes, …).
	things := 4 + len(projector.Streams(projector.Config{}))
	first := initAs()
	if code := first.wait(t, 30*time.Second); code != 0 || strings.Count(first.out.String(), " created ") != things {
		t.Fatalf("init as admin: exit %d, want 0 creating %d things:\n%s", code, things, first.out.String())
	}
	again := initAs()
	if code := again.wait(t, 30*time.Second); code != 0 || strings.Count(again.out.String(), " exists ") != things {
		t.Fatalf("init again: exit %d, want 0 finding %d things as it makes them:\n%s", code, things, again.out.String())
	}

	dir := t.TempDir()
	changeFile(t, dir, "1.yaml", "id: 0001-ok\norder: '1'\napply: 'true'\n")
	changeFile(t, dir, "2.yaml", "id: 0002-fails\norder: '2'\napply: 'exit 7'\n")
	runnerAs := func(id string) *proc {
		p := runner(t, d.url(roleRunner), dir, deployPipeline, id)
		procs = append(procs, p)
		return p
	}
	if r := runnerAs("runner-a"); r.wait(t, 60*time.Second) != 3 {
		t.Fatalf("runner as %s: want exit 3 (the second change fails as written):\n%s", roleRunner, r.out.String())
	}

	db := filepath.Join(t.TempDir(), "audit.db")
	addr := freeAddr(t)
	p := as(roleProjector, bin.projector, "--store", "sqlite", "--sqlite-path", db, "--metrics-addr", addr)
	waitReady(t, addr)
	st, err := sqlitestore.Open(context.Background(), db, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	stored := func(n int) func() bool {
		return func() bool {
			rows, err := st.History(context.Background(), stores.HistoryQuery{Pipeline: deployPipeline, Limit: stores.MaxLimit})
			return err == nil && len(rows) == n
		}
	}
	eventually(t, 20*time.Second, "the projector stores the runner's 4 events", stored(4))

	cli := func(store string, args ...string) *proc {
		return as(roleOperator, bin.auditflow, append([]string{"--store", "sqlite", "--sqlite-path", store}, args...)...)
	}
	for _, args := range [][]string{{"test-connection"}, {"verify-schema"}, {"lock", "list"}, {"issue", "list"}, {"stats"}, {"verify"}} {
		c := cli(db, args...)
		if c.wait(t, 30*time.Second) != 0 {
			t.Fatalf("auditflow %v as %s:\n%s", args, roleOperator, c.out.String())
		}
		if args[0] == "verify" && strings.Contains(c.out.String(), "not recorded") {
			t.Fatalf("verify as %s could not record its result:\n%s", roleOperator, c.out.String())
		}
	}
	_, adminJS := d.connect(t, roleAdmin)
	if res, ok, err := verify.LastResult(context.Background(), adminJS, "sqlite"); err != nil || !ok || !res.OK {
		t.Fatalf("the operator's verify result: %+v, %v, %v", res, ok, err)
	}
	if c := cli(filepath.Join(t.TempDir(), "replayed.db"), "replay"); c.wait(t, 30*time.Second) != 0 || !strings.Contains(c.out.String(), "replayed 4 events") {
		t.Fatalf("auditflow replay as %s:\n%s", roleOperator, c.out.String())
	}
	fix := cli(db, "issue", "fix", "-p", deployPipeline, "-c", "0002-fails", "-r", "rolled-back", "--reason", "the script is fixed", "--operator", "alice")
	if fix.wait(t, 30*time.Second) != 0 {
		t.Fatalf("issue fix as %s:\n%s", roleOperator, fix.out.String())
	}
	eventually(t, 20*time.Second, "the projector stores the operator's decision", stored(5))

	changeFile(t, dir, "2.yaml", "id: 0002-fails\norder: '2'\napply: 'true'\n")
	if r := runnerAs("runner-b"); r.wait(t, 60*time.Second) != 0 {
		t.Fatalf("runner after the fix: want exit 0:\n%s", r.out.String())
	}
	eventually(t, 20*time.Second, "the projector stores the second run", stored(7))
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("projector exit %d after SIGTERM", code)
	}
	_, js := d.connect(t, roleOperator)
	want := []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.ManuallyResolved, events.ExecutionStarted, events.ExecutionSucceeded}
	if got := typesOf(history(t, js, deployPipeline, "0002-fails")); !slices.Equal(got, want) {
		t.Fatalf("0002-fails recorded %v, want %v", got, want)
	}
	// The runner role, with its real credentials, publishes events that
	// claim the next schema version on its own subjects: a projector
	// started again, as its role, parks them (publishes pointers to AUDIT_HELD, reads it)
	// without a permission violation (the cleanup checks every process's
	// output), and its readiness says an upgrade is needed.
	_, runnerJS := d.connect(t, roleRunner)
	const newer = 3
	for i := range newer {
		e := events.New(events.ExecutionStarted, deployPipeline, fmt.Sprintf("newer-%d", i))
		e.ExecutionID = "x"
		b, err := events.Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := json.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		doc["data"].(map[string]any)["schemaVersion"] = events.SchemaVersion + 1
		if b, err = json.Marshal(doc); err != nil {
			t.Fatal(err)
		}
		if _, err := runnerJS.Publish(context.Background(), events.Subject(events.DefaultSubjectPrefix, deployPipeline, e.ChangeID), b); err != nil {
			t.Fatalf("publish as %s: %v", roleRunner, err)
		}
	}

	addr = freeAddr(t)
	as(roleProjector, bin.projector, "--store", "sqlite", "--sqlite-path", db, "--metrics-addr", addr)
	_, heldJS := d.connect(t, roleAdmin)
	eventually(t, 20*time.Second, "the projector parks the 3 newer-version events", func() bool {
		n, err := inspect.HeldOf(context.Background(), heldJS, "projector-sqlite")
		return err == nil && n == newer
	})
	if code, body := get(t, addr, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "upgrade needed: 3 events") {
		t.Fatalf("readyz with 3 events parked: %d %s", code, body)
	}
}

// TestDeployConsoleReadsAsConsole runs auditflow console as the console
// user of the deployment's NATS configuration, on the SQLite store a
// projector (as the projector user) fills from a runner's runs (as the
// runner user): every part of the console that reads NATS works — locks
// (with one held), dead letters (with one there), lag, write latency and
// the dead-letter count in stats, and live events of a run made while
// watching — and the console never meets a permission violation, and
// uses every right its role gives it.
func TestDeployConsoleReadsAsConsole(t *testing.T) {
	d := startDeployment(t, nil)
	initAuditflow(t, d.url(roleAdmin))
	ctx := context.Background()
	dir := t.TempDir()
	changeFile(t, dir, "1.yaml", "id: 0001-ok\norder: '1'\napply: 'true'\n")
	if r := runner(t, d.url(roleRunner), dir, deployPipeline, "runner-a"); r.wait(t, 60*time.Second) != 0 {
		t.Fatalf("runner as %s:\n%s", roleRunner, r.out.String())
	}
	// A message the projector cannot store: a dead letter.
	rnc, rjs := d.connect(t, roleRunner)
	if err := rnc.Publish("audit.exec."+deployPipeline+".0009-garbage", []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(t.TempDir(), "audit.db")
	addr := freeAddr(t)
	start(t, d.url(roleProjector), bin.projector, "--store", "sqlite", "--sqlite-path", db, "--metrics-addr", addr)
	waitReady(t, addr)
	// A lock held while the console lists them.
	rl, err := lock.New(ctx, rjs, lock.Config{Owner: "runner-held"})
	if err != nil {
		t.Fatal(err)
	}
	held, err := rl.TryAcquire(ctx, deployPipeline)
	if err != nil {
		t.Fatal(err)
	}

	rec := d.recordPublishes()
	keys := filepath.Join(t.TempDir(), "console-keys")
	c := consoleClient{addr: freeAddr(t), key: consoleKey(t, "--keys-file", keys)}
	con := start(t, d.url(roleConsole), bin.auditflow, "--store", "sqlite", "--sqlite-path", db, "console", "--listen", c.addr, "--keys-file", keys)
	t.Cleanup(func() {
		if out := con.out.String(); strings.Contains(strings.ToLower(out), "permissions violation") {
			t.Errorf("the console met a permission violation:\n%s", out)
		}
	})
	c.waitUp(t)

	var locks struct {
		Locks []struct{ Pipeline, Holder string }
		Note  string
	}
	c.getJSON(t, "/api/v1/locks", &locks)
	if len(locks.Locks) != 1 || locks.Locks[0].Pipeline != deployPipeline || locks.Locks[0].Holder != "runner-held" || locks.Note != "" {
		t.Fatalf("locks: %+v, want the held lock", locks)
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	var dls struct {
		DeadLetters []struct{ OriginalSubject string }
		Total       uint64
		Note        string
	}
	eventually(t, 20*time.Second, "the console lists the dead letter", func() bool {
		c.getJSON(t, "/api/v1/deadletters", &dls)
		return len(dls.DeadLetters) == 1
	})
	if dls.DeadLetters[0].OriginalSubject != "audit.exec."+deployPipeline+".0009-garbage" || dls.Total != 1 || dls.Note != "" {
		t.Fatalf("dead letters: %+v", dls)
	}
	var stats struct {
		Checkpoint  uint64
		Lag         *struct{ Consumer string }
		Writes      *struct{ Writes int }
		DeadLetters *struct{ Total uint64 }
		Notes       []string
	}
	eventually(t, 20*time.Second, "the console's stats see the projector's writes", func() bool {
		c.getJSON(t, "/api/v1/stats", &stats)
		return stats.Writes != nil && stats.Writes.Writes > 0
	})
	// This projector runs without a trust list (TestMain), and stats
	// says so; nothing else is wrong.
	unchecked := "runs without a trust list (--insecure-no-trust)"
	if stats.Lag == nil || stats.Lag.Consumer != "projector-sqlite" || stats.DeadLetters == nil || stats.DeadLetters.Total != 1 ||
		len(stats.Notes) != 1 || !strings.Contains(stats.Notes[0], unchecked) {
		t.Fatalf("stats: lag %+v, dead letters %+v, notes %q; want only the note that it %s", stats.Lag, stats.DeadLetters, stats.Notes, unchecked)
	}
	// A window without writes: the scan of AuditWrites finds nothing and
	// asks its consumer's info whether anything is left.
	// (A start in the future is refused, as by the CLI's --since: the
	// window starts after the last write instead; RFC 3339 has seconds.)
	time.Sleep(2 * time.Second)
	c.getJSON(t, "/api/v1/stats?since="+time.Now().UTC().Format(time.RFC3339), &stats)
	if stats.Writes == nil || stats.Writes.Writes != 0 || len(stats.Notes) != 0 {
		t.Fatalf("stats of the next hour: writes %+v, notes %q", stats.Writes, stats.Notes)
	}

	waitFor := c.follow(t)
	waitFor(`"status":"live"`)
	changeFile(t, dir, "2.yaml", "id: 0002-live\norder: '2'\napply: 'true'\n")
	if r := runner(t, d.url(roleRunner), dir, deployPipeline, "runner-b"); r.wait(t, 60*time.Second) != 0 {
		t.Fatalf("second run:\n%s", r.out.String())
	}
	waitFor(`"changeId":"0002-live"`)

	// The last verify result: the operator's verify records it (exit 3:
	// the garbage message is an open stream problem), the console reads it.
	v := start(t, d.url(roleOperator), bin.auditflow, "--store", "sqlite", "--sqlite-path", db, "verify")
	if code := v.wait(t, 60*time.Second); code != 3 || strings.Contains(v.out.String(), "not recorded") {
		t.Fatalf("verify as %s: exit %d, want 3 and its result recorded:\n%s", roleOperator, code, v.out.String())
	}
	var last struct {
		Recorded bool
		Result   struct{ OK bool }
	}
	c.getJSON(t, "/api/v1/verify", &last)
	if !last.Recorded || last.Result.OK {
		t.Fatalf("the console's last verify result: %+v, want the operator's failed run", last)
	}

	// Least privilege: the console used every right its role gives —
	// but the count of events held for a newer projector while no
	// projector holds any (no AUDIT_HELD among the projector's streams).
	allow := d.permissions(t, roleConsole).Publish.Allow
	if !slices.ContainsFunc(projector.Streams(projector.Config{}), func(s jetstream.StreamConfig) bool { return s.Name == "AUDIT_HELD" }) {
		allow = slices.DeleteFunc(slices.Clone(allow), func(s string) bool { return s == "$JS.API.STREAM.INFO.AUDIT_HELD" })
	}
	if unused := rec.unused(roleConsole, allow); len(unused) > 0 {
		t.Errorf("the console role allows publishing to %q, which the console did not use", unused)
	}
}

// denial is one thing a role must not be able to do, and the subject the
// server must name when it refuses.
type denial struct {
	user, what, subject string
	do                  func(ctx context.Context, js jetstream.JetStream) error
}

// TestDeployDenials: what each role must not do is refused at once, with
// an error that names the denied subject (a *natsperm.Error), not a
// timeout: a runner outside its pipeline or at the streams, a projector
// writing history, the console writing anything (history, locks, the
// projectors' consumers), the SIEM feed's role writing history, locks or
// the projectors' consumers (pulling from one, changing, deleting,
// acknowledging its deliveries), anyone deleting or purging the audit
// stream or the lock bucket, or editing the audit stream.
func TestDeployDenials(t *testing.T) {
	d := startDeployment(t, nil)
	initAuditflow(t, d.url(roleAdmin))
	ctx := context.Background()

	// A live lock of another pipeline, held by the operator's CLI role.
	_, opJS := d.connect(t, roleOperator)
	opLocks, err := lock.New(ctx, opJS, lock.Config{Owner: "someone-else"})
	if err != nil {
		t.Fatal(err)
	}
	billing, err := opLocks.TryAcquire(ctx, "billing")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = billing.Release(context.Background()) })

	deleteStream := func(name string) func(context.Context, jetstream.JetStream) error {
		return func(ctx context.Context, js jetstream.JetStream) error { return js.DeleteStream(ctx, name) }
	}
	purgeStream := func(name string) func(context.Context, jetstream.JetStream) error {
		return func(ctx context.Context, js jetstream.JetStream) error {
			// The purge request itself, whether or not the role may read the stream's info.
			_, err := js.Conn().RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+name, nil)
			return err
		}
	}
	var cases []denial
	for _, user := range []string{roleAdmin, roleOperator, roleProjector, roleRunner, roleConsole, roleSIEM} {
		cases = append(cases,
			denial{user, "delete the audit stream", "$JS.API.STREAM.DELETE.AUDIT", deleteStream("AUDIT")},
			denial{user, "purge the audit stream", "$JS.API.STREAM.PURGE.AUDIT", purgeStream("AUDIT")},
			denial{user, "delete the lock bucket", "$JS.API.STREAM.DELETE.KV_auditflow_locks", func(ctx context.Context, js jetstream.JetStream) error {
				return js.DeleteKeyValue(ctx, lock.DefaultBucket)
			}},
			denial{user, "purge the lock bucket", "$JS.API.STREAM.PURGE.KV_auditflow_locks", purgeStream("KV_auditflow_locks")},
			denial{user, "delete the dead letters", "$JS.API.STREAM.DELETE.AUDIT_DEADLETTER", deleteStream(projector.DeadLetterStream)},
			denial{user, "bound the audit stream's age", "$JS.API.STREAM.UPDATE.AUDIT", func(ctx context.Context, js jetstream.JetStream) error {
				cfg := jetstream.StreamConfig{Name: "AUDIT", Subjects: []string{"audit.exec.>"}, MaxAge: time.Hour}
				_, err := js.UpdateStream(ctx, cfg)
				return err
			}},
			denial{user, "promote or bound the mirror", "$JS.API.STREAM.UPDATE.AUDIT_MIRROR", func(ctx context.Context, js jetstream.JetStream) error {
				_, err := js.UpdateStream(ctx, jetstream.StreamConfig{Name: "AUDIT_MIRROR", MaxAge: time.Hour})
				return err
			}},
		)
	}
	locks := func(op func(context.Context, jetstream.KeyValue) error) func(context.Context, jetstream.JetStream) error {
		return func(ctx context.Context, js jetstream.JetStream) error {
			kv, err := js.KeyValue(ctx, lock.DefaultBucket)
			if err != nil {
				return err
			}
			return op(ctx, kv)
		}
	}
	deleteBilling := locks(func(ctx context.Context, kv jetstream.KeyValue) error { return kv.Delete(ctx, "billing") })
	publish := func(pl string) func(context.Context, jetstream.JetStream) error {
		return func(ctx context.Context, js jetstream.JetStream) error {
			prod, err := producer.New(ctx, js, producer.Config{RetryFor: 10 * time.Second})
			if err != nil {
				return err
			}
			e := events.New(events.ExecutionStarted, pl, "0001-forged")
			e.ExecutionID = "forged"
			// Placed first, so the publish is what is tried (unplaced, it
			// would read the change's newest message first).
			_, err = prod.Publish(ctx, e, producer.ExpectLastSeq(0))
			return err
		}
	}
	cases = append(cases,
		denial{roleRunner, "write another pipeline's history", "audit.exec.billing.0001-forged", publish("billing")},
		denial{roleRunner, "read another pipeline's history", "$JS.API.DIRECT.GET.AUDIT.audit.exec.billing.0001-x", func(ctx context.Context, js jetstream.JetStream) error {
			prod, err := producer.New(ctx, js, producer.Config{RetryFor: 10 * time.Second})
			if err != nil {
				return err
			}
			_, _, err = prod.Last(ctx, "billing", "0001-x")
			return err
		}},
		denial{roleRunner, "take another pipeline's lock", "$KV.auditflow_locks.billing", func(ctx context.Context, js jetstream.JetStream) error {
			l, err := lock.New(ctx, js, lock.Config{Owner: "intruder"})
			if err != nil {
				return err
			}
			_, err = l.Acquire(ctx, "billing")
			return err
		}},
		denial{roleRunner, "delete another pipeline's live lock", "$KV.auditflow_locks.billing", deleteBilling},
		denial{roleRunner, "create a stream", "$JS.API.STREAM.CREATE.AUDIT2", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "AUDIT2", Subjects: []string{"x.>"}})
			return err
		}},
		denial{roleProjector, "write history", "audit.exec." + deployPipeline + ".0001-forged", publish(deployPipeline)},
		denial{roleProjector, "take a lock", "$JS.API.STREAM.INFO.KV_auditflow_locks", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := lock.New(ctx, js, lock.Config{})
			return err
		}},
		denial{roleOperator, "delete a projector's durable consumer", "$JS.API.CONSUMER.DELETE.AUDIT.projector-sqlite", func(ctx context.Context, js jetstream.JetStream) error {
			return js.DeleteConsumer(ctx, producer.DefaultStreamName, "projector-sqlite")
		}},
		denial{roleConsole, "write history", "audit.exec." + deployPipeline + ".0001-forged", publish(deployPipeline)},
		denial{roleConsole, "take a lock", "$KV.auditflow_locks." + deployPipeline, locks(func(ctx context.Context, kv jetstream.KeyValue) error {
			_, err := kv.Create(ctx, deployPipeline, []byte("{}"))
			return err
		})},
		denial{roleConsole, "delete a live lock", "$KV.auditflow_locks.billing", deleteBilling},
		denial{roleConsole, "delete a projector's durable consumer", "$JS.API.CONSUMER.DELETE.AUDIT.projector-sqlite", func(ctx context.Context, js jetstream.JetStream) error {
			return js.DeleteConsumer(ctx, producer.DefaultStreamName, "projector-sqlite")
		}},
		denial{roleConsole, "change a projector's durable consumer", "$JS.API.CONSUMER.CREATE.AUDIT.projector-sqlite", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.CreateOrUpdateConsumer(ctx, producer.DefaultStreamName, jetstream.ConsumerConfig{Durable: "projector-sqlite", AckPolicy: jetstream.AckExplicitPolicy})
			return err
		}},
		denial{roleConsole, "create a durable consumer", "$JS.API.CONSUMER.DURABLE.CREATE.AUDIT_WRITES.console", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.Conn().RequestWithContext(ctx, "$JS.API.CONSUMER.DURABLE.CREATE.AUDIT_WRITES.console", []byte(`{"stream_name":"AUDIT_WRITES","config":{"durable_name":"console"}}`))
			return err
		}},
		denial{roleConsole, "read history from the stream", "$JS.API.DIRECT.GET.AUDIT", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.Conn().RequestWithContext(ctx, "$JS.API.DIRECT.GET.AUDIT", []byte(`{"seq":1}`))
			return err
		}},
		denial{roleSIEM, "write history", "audit.exec.x.y", func(ctx context.Context, js jetstream.JetStream) error {
			return js.Conn().Publish("audit.exec.x.y", []byte("{}"))
		}},
		denial{roleSIEM, "write history through the producer", "audit.exec." + deployPipeline + ".0001-forged", publish(deployPipeline)},
		denial{roleSIEM, "pull from a projector's durable consumer", "$JS.API.CONSUMER.MSG.NEXT.AUDIT.projector-sqlite", func(ctx context.Context, js jetstream.JetStream) error {
			// The projector's consumer, by its name: the role may not read
			// its info either, so the pull is sent as the library sends it.
			_, err := js.Conn().RequestWithContext(ctx, "$JS.API.CONSUMER.MSG.NEXT.AUDIT.projector-sqlite", []byte(`{"batch":1,"expires":1000000000}`))
			return err
		}},
		denial{roleSIEM, "re-filter a projector's durable consumer", "$JS.API.CONSUMER.CREATE.AUDIT.projector-sqlite.audit.exec.billing.*", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.CreateOrUpdateConsumer(ctx, producer.DefaultStreamName, jetstream.ConsumerConfig{Durable: "projector-sqlite",
				FilterSubject: "audit.exec.billing.*", AckPolicy: jetstream.AckExplicitPolicy})
			return err
		}},
		denial{roleSIEM, "delete a projector's durable consumer", "$JS.API.CONSUMER.DELETE.AUDIT.projector-sqlite", func(ctx context.Context, js jetstream.JetStream) error {
			return js.DeleteConsumer(ctx, producer.DefaultStreamName, "projector-sqlite")
		}},
		denial{roleSIEM, "acknowledge a projector's delivery", "$JS.ACK.AUDIT.projector-sqlite.1.1.1.1.0", func(ctx context.Context, js jetstream.JetStream) error {
			return js.Conn().Publish("$JS.ACK.AUDIT.projector-sqlite.1.1.1.1.0", nil)
		}},
		denial{roleSIEM, "take a lock", "$JS.API.STREAM.INFO.KV_auditflow_locks", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := lock.New(ctx, js, lock.Config{})
			return err
		}},
		denial{roleAdmin, "write history", "audit.exec." + deployPipeline + ".0001-forged", func(ctx context.Context, js jetstream.JetStream) error {
			return js.Conn().Publish("audit.exec."+deployPipeline+".0001-forged", []byte("{}"))
		}},
	)
	for _, c := range cases {
		t.Run(c.user+" may not "+c.what, func(t *testing.T) {
			nc, js := d.connect(t, c.user)
			ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			start := time.Now()
			_, err := natsperm.Do(ctx, nc, nil, func(ctx context.Context) (struct{}, error) {
				err := c.do(ctx, js)
				if err == nil {
					_ = nc.FlushWithContext(ctx) // a plain publish: let the server's refusal arrive
					time.Sleep(100 * time.Millisecond)
					err = errors.New("no error")
				}
				return struct{}{}, err
			})
			var pe *natsperm.Error
			if !errors.As(err, &pe) || pe.Subject != c.subject || !errors.Is(err, nats.ErrPermissionViolation) {
				t.Fatalf("got %v, want a permission error naming %q", err, c.subject)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Errorf("refused after %s: a missing right must not wait out a timeout", took.Round(time.Millisecond))
			}
			if !strings.Contains(err.Error(), c.subject) || !strings.Contains(err.Error(), "permission denied") {
				t.Errorf("message %q does not name the subject", err)
			}
		})
	}

	// The runner's own pipeline works, and the other pipeline's lock is
	// still its holder's.
	_, rjs := d.connect(t, roleRunner)
	rl, err := lock.New(ctx, rjs, lock.Config{Owner: "runner"})
	if err != nil {
		t.Fatal(err)
	}
	own, err := rl.TryAcquire(ctx, deployPipeline)
	if err != nil {
		t.Fatal(err)
	}
	if err := own.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if h, err := opLocks.Holder(ctx, "billing"); err != nil || h.Owner != "someone-else" || !billing.Valid() {
		t.Fatalf("billing's lock after the intrusions: %+v %v", h, err)
	}
	if _, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", d.port)); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect without a password: %v, want an authorization violation", err)
	}
}

// TestDeployTLS enables deploy/nats/tls.conf with certificates from
// deploy/tls/make-certs.sh: a client needs the CA, its role's certificate
// and its password; without its certificate, or without TLS, it is
// refused. The certificate is the role (verify_and_map): each role's
// certificate connects as that role, whatever user name the client
// sends; a runner's certificate with any other role's password is
// refused, and with the admin's user name it is still the runner, denied
// what the admin may do. auditflow init runs over it with the
// --nats-tls-* flags.
func TestDeployTLS(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		msg := "openssl is not installed (apt-get install openssl): deploy/tls/make-certs.sh uses it"
		if os.Getenv(storetest.RequireIntegrationEnv) == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	certs := t.TempDir()
	if out, err := exec.Command("sh", filepath.Join("..", "..", "deploy", "tls", "make-certs.sh"), certs).CombinedOutput(); err != nil {
		t.Fatalf("make-certs.sh: %v\n%s", err, out)
	}
	pem := func(name string) string { return filepath.Join(certs, name+".pem") }
	t.Setenv("AUDITFLOW_TLS_SERVER_CERT", pem("server"))
	t.Setenv("AUDITFLOW_TLS_SERVER_KEY", pem("server-key"))
	t.Setenv("AUDITFLOW_TLS_CA", pem("ca"))
	d := startDeployment(t, func(conf string) string {
		on := strings.Replace(conf, "# include ./tls.conf", "include ./tls.conf", 1)
		if on == conf {
			t.Fatal("nats.conf has no commented-out include of tls.conf")
		}
		return on
	})
	if !d.opts.TLSMap {
		t.Fatal("tls.conf does not map certificates to users (verify_and_map)")
	}
	init := start(t, d.url(roleAdmin), bin.auditflow, "init", "--lock-lease", lease.String(),
		"--nats-tls-ca", pem("ca"), "--nats-tls-cert", pem("admin"), "--nats-tls-key", pem("admin-key"))
	if code := init.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("init over TLS: exit %d\n%s", code, init.out.String())
	}
	cert := func(role string) []nats.Option {
		return []nats.Option{nats.RootCAs(pem("ca")), nats.ClientCert(pem(role), pem(role+"-key"))}
	}
	// user is the user the server took a connection for.
	user := func(t *testing.T, nc *nats.Conn) string {
		t.Helper()
		cid, err := nc.GetClientID()
		if err != nil {
			t.Fatal(err)
		}
		cz, err := d.s.Connz(&natsserver.ConnzOptions{CID: cid, Username: true})
		if err != nil || len(cz.Conns) != 1 {
			t.Fatalf("connz of cid %d: %v %+v", cid, err, cz)
		}
		return cz.Conns[0].AuthorizedUser
	}
	roles := []string{roleAdmin, roleOperator, roleProjector, roleRunner, roleConsole, roleSIEM}
	for _, role := range roles {
		nc, _ := d.connect(t, role, cert(role)...)
		if got := user(t, nc); got != role {
			t.Errorf("%s's certificate and password: connected as %q", role, got)
		}
	}

	// The runner's certificate, claiming to be the admin: the user name
	// is not the server's to take, the certificate's is.
	claim := fmt.Sprintf("nats://%s:%s@127.0.0.1:%d", roleAdmin, d.pw[roleRunner], d.port)
	nc, js := natstest.ConnectURL(t, claim, append(cert(roleRunner), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}),
		nats.CustomInboxPrefix("_INBOX."+roleRunner))...)
	if got := user(t, nc); got != roleRunner {
		t.Fatalf("the runner's certificate with the user name admin: connected as %q, want %s", got, roleRunner)
	}
	prod, err := producer.New(context.Background(), js, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	e := events.New(events.ExecutionStarted, deployPipeline, "0001-tls")
	e.ExecutionID = "x"
	if _, err := prod.Publish(context.Background(), e); err != nil {
		t.Fatalf("the runner's own work over TLS: %v", err)
	}
	for subject, body := range map[string]string{
		"$JS.API.STREAM.CREATE.AUDIT2":                 `{"name":"AUDIT2","subjects":["x.>"]}`, // what the admin may do
		"$JS.API.CONSUMER.INFO.AUDIT.projector-sqlite": "",                                     // what the runner may not
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := natsperm.Do(ctx, nc, nil, func(ctx context.Context) (*nats.Msg, error) {
			return nc.RequestWithContext(ctx, subject, []byte(body))
		})
		cancel()
		if pe, ok := natsperm.Parse(err); !ok || pe.Subject != subject {
			t.Errorf("the runner's certificate claiming admin, %s: %v, want a permission violation", subject, err)
		}
	}

	// With any other role's password, the runner's certificate is refused.
	for _, role := range roles {
		if role == roleRunner {
			continue
		}
		if nc, err := nats.Connect(d.url(role), append(cert(roleRunner), nats.NoReconnect())...); err == nil {
			t.Errorf("the runner's certificate with the %s's user and password: connected as %q", role, user(t, nc))
			nc.Close()
		} else if !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("the runner's certificate with the %s's password: %v, want an authorization violation", role, err)
		}
	}
	for what, opts := range map[string][]nats.Option{
		"TLS without a client certificate": {nats.RootCAs(pem("ca"))},
		"no CA to verify the server with":  nil,
	} {
		if nc, err := nats.Connect(d.url(roleRunner), append(opts, nats.NoReconnect())...); err == nil {
			nc.Close()
			t.Errorf("%s: connected", what)
		} else {
			t.Logf("%s: refused: %v", what, err)
		}
	}
}

// TestDeletedStreamIsNotRecreated: a stream deleted under a deployment
// (by a user with the right to, which the deployment's users do not have)
// stops runners and projectors with an error that says how to init or
// restore it; nothing is applied again and the stream is not recreated.
// auditflow init then refuses to create an empty one (exit 5) until
// --force.
func TestDeletedStreamIsNotRecreated(t *testing.T) {
	srv := startServer(t)
	initAuditflow(t, srv.URL)
	dir := t.TempDir()
	journal := filepath.Join(dir, "journal")
	for i := 1; i <= 3; i++ {
		changeFile(t, dir, fmt.Sprintf("%d.yaml", i), fmt.Sprintf("id: 000%d-change\norder: '%d'\napply: echo %d >> %s\n", i, i, i, journal))
	}
	if r := runner(t, srv.URL, dir, "billing", "runner-a"); r.wait(t, 60*time.Second) != 0 {
		t.Fatalf("first run:\n%s", r.out.String())
	}
	if err := srv.JS.DeleteStream(context.Background(), producer.DefaultStreamName); err != nil {
		t.Fatal(err)
	}

	r := runner(t, srv.URL, dir, "billing", "runner-b")
	if code := r.wait(t, 60*time.Second); code != 1 {
		t.Fatalf("runner with the stream deleted: exit %d, want 1:\n%s", code, r.out.String())
	}
	for _, want := range []string{"AUDIT does not exist", "auditflow init", "restore it from its backup or mirror"} {
		if !strings.Contains(r.out.String(), want) {
			t.Errorf("runner's error does not say %q:\n%s", want, r.out.String())
		}
	}
	if b, _ := os.ReadFile(journal); string(b) != "1\n2\n3\n" {
		t.Fatalf("changes applied: %q, want each once", b)
	}
	db := filepath.Join(t.TempDir(), "audit.db")
	p := start(t, srv.URL, bin.projector, "--store", "sqlite", "--sqlite-path", db, "--metrics-addr", "")
	if code := p.wait(t, 60*time.Second); code != 1 || !strings.Contains(p.out.String(), "auditflow init") {
		t.Fatalf("projector with the stream deleted: exit %d, want 1 naming auditflow init:\n%s", code, p.out.String())
	}
	if _, err := srv.JS.Stream(context.Background(), producer.DefaultStreamName); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("stream after the runner and the projector: %v, want still missing", err)
	}

	refused := start(t, srv.URL, bin.auditflow, "init", "--lock-lease", lease.String())
	if code := refused.wait(t, 30*time.Second); code != 5 || !strings.Contains(refused.out.String(), "was deleted") {
		t.Fatalf("init over a deleted stream: exit %d, want 5 saying it was deleted:\n%s", code, refused.out.String())
	}
	if _, err := srv.JS.Stream(context.Background(), producer.DefaultStreamName); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("stream after a refused init: %v", err)
	}
	forced := start(t, srv.URL, bin.auditflow, "init", "--lock-lease", lease.String(), "--force")
	if code := forced.wait(t, 30*time.Second); code != 0 || !strings.Contains(forced.out.String(), "EMPTY") {
		t.Fatalf("init --force: exit %d\n%s", code, forced.out.String())
	}
}

// TestRemovedLockStopsItsHolder: purging or deleting a live lock's key
// under a runner applying a change makes that runner stop
// the change at its next refresh — within a third of the lease — and exit
// 5 (lock lost), not finish it beside the next holder (which takes the
// lock but starts only once the removed holder's lease has run out:
// locks_test.go).
func TestRemovedLockStopsItsHolder(t *testing.T) {
	for name, remove := range map[string]func(t *testing.T, js jetstream.JetStream){
		// The bucket refuses purges and rollups (locks_test.go); a purge
		// marker written as a plain message on the key still removes it.
		"key purged": func(t *testing.T, js jetstream.JetStream) {
			m := nats.NewMsg("$KV." + lock.DefaultBucket + ".billing")
			m.Header.Set("KV-Operation", "PURGE")
			if _, err := js.PublishMsg(context.Background(), m); err != nil {
				t.Fatal(err)
			}
		},
		"key deleted": func(t *testing.T, js jetstream.JetStream) {
			kv, err := js.KeyValue(context.Background(), lock.DefaultBucket)
			if err == nil {
				err = kv.Delete(context.Background(), "billing")
			}
			if err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := startServer(t)
			initAuditflow(t, srv.URL)
			dir := t.TempDir()
			journal := filepath.Join(dir, "journal")
			changeFile(t, dir, "1.yaml", `id: 0001-slow
apply: |
  JOURNAL=`+journal+`
  `+strings.ReplaceAll(journalScript, "\n", "\n  ")+`
  sleep 30 & wait $!
  log end
`)
			r := runner(t, srv.URL, dir, "billing", "runner-a", "--stop-grace", "1s")
			eventually(t, 20*time.Second, "the change starts", func() bool { return len(readJournal(t, journal)) > 0 })
			remove(t, srv.JS)
			removed := time.Now()
			if code := r.wait(t, 30*time.Second); code != 5 {
				t.Fatalf("holder after the lock was removed: exit %d, want 5:\n%s", code, r.out.String())
			}
			ss := spans(readJournal(t, journal))
			if len(ss) != 1 || ss[0].ended {
				t.Fatalf("executions %+v, want one, stopped", ss)
			}
			stopped := ss[0].end.Sub(removed)
			t.Logf("the change's last sign of life came %s after the lock was removed", stopped.Round(time.Millisecond))
			// The next refresh, the stop grace, and slack for a loaded machine.
			if bound := lease/3 + time.Second + time.Second; stopped > bound {
				t.Errorf("the change went on for %s after its lock was removed, over %s", stopped, bound)
			}
			es := history(t, srv.JS, "billing", "0001-slow")
			if got := typesOf(es); len(got) != 2 || got[1] == events.ExecutionSucceeded {
				t.Fatalf("recorded %v, want a start and a stop", got)
			}
			t.Logf("recorded %s: %s", es[1].Type, es[1].ErrorMessage)
		})
	}
}

//go:build unix

package faulttest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// A user nkey made for this test, and its public key: the seed is a
// canary of its own (it cannot hold an arbitrary string).
const (
	canarySeed   = "SUAMCD2EFNFP2YAGFV3YBQKP3BKMBOGHRRPMTKN7EQQQHIREGUVRJ7TMFQ"
	canaryPublic = "UCIIVDBDKPRPEZQYEJS6SI7MAC2RS3DVH7WFV4RZYYIEGLSRAUL7ZORB"
)

// TestCanarySecretNeverLeaks sets one unique canary secret in every way the
// commands take a secret — the password of AUDITFLOW_NATS_URL (the server
// requires it), store URIs and passwords in the environment, a password
// file, AWS variables — and an nkey seed file for a second runner, then
// looks for them everywhere the README promises they never appear: the
// -h of runner, projector and auditflow; the errors of unparseable URLs;
// the processes' output and logs at debug level; every message on every
// stream of the server, including the errorTrace of a failing change that
// runs `env`, `set -x` and echoes and cats its secrets; the audit store's
// rows and file; and a projector's /metrics. It also checks what the
// failing change's environment held: none of the runner's AUDITFLOW_*
// secrets except the one its file passes.
func TestCanarySecretNeverLeaks(t *testing.T) {
	canary := fmt.Sprintf("cnry%xq", time.Now().UnixNano())
	leaks := func(s string) bool { return strings.Contains(s, canary) || strings.Contains(s, canarySeed) }
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "couchbase-password")
	seedFile := filepath.Join(dir, "runner.nk")
	for path, content := range map[string]string{pwFile: canary + "\n", seedFile: canarySeed + "\n"} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	s, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		JetStream: true, StoreDir: t.TempDir(),
		Users: []*natsserver.User{{Username: "auditflow", Password: canary}},
		Nkeys: []*natsserver.NkeyUser{{Nkey: canaryPublic}}})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS server not ready")
	}
	addr := strings.TrimPrefix(s.ClientURL(), "nats://")
	url := "nats://auditflow:" + canary + "@" + addr

	secretEnv := map[string]string{
		"AUDITFLOW_NATS_URL":                url,
		"AUDITFLOW_MONGO_URI":               "mongodb://auditor:" + canary + "@db1,db2/?tlsCertificateKeyFilePassword=" + canary + "&authMechanismProperties=AWS_SESSION_TOKEN:" + canary,
		"AUDITFLOW_COUCHBASE_CONNSTR":       "couchbases://auditor:" + canary + "@cb",
		"AUDITFLOW_COUCHBASE_PASSWORD":      canary,
		"AUDITFLOW_COUCHBASE_PASSWORD_FILE": pwFile,
		"AUDITFLOW_DYNAMO_ENDPOINT":         "http://ddb:8000/?X-Amz-Security-Token=" + canary,
		"AWS_SECRET_ACCESS_KEY":             canary,
		"AWS_SESSION_TOKEN":                 canary,
		"AUDITFLOW_LOG_LEVEL":               "debug",
	}
	for k, v := range secretEnv {
		t.Setenv(k, v)
	}
	initWithAuth(t, url)

	t.Run("help", func(t *testing.T) {
		for _, c := range [][]string{{bin.runner, "-h"}, {bin.projector, "-h"}, {bin.auditflow, "-h"}, {bin.auditflow, "issue", "list", "-h"}} {
			code, out := output(t, nil, c...)
			if code != 0 || leaks(out) || !strings.Contains(out, "redacted") || !strings.Contains(out, "nats-nkey") {
				t.Errorf("%s: exit %d; want the redacted defaults and --nats-nkey, without the canary:\n%s", strings.Join(c[1:], " "), code, out)
			}
		}
	})

	t.Run("bad URLs", func(t *testing.T) {
		sqlite, changes := filepath.Join(t.TempDir(), "audit.db"), t.TempDir()
		changeFile(t, changes, "1.yaml", "id: x\napply: 'true'\n")
		for _, bad := range []string{"nats://auditflow:" + canary + "@127.0.0.1:notaport", "nats://auditflow:" + canary + "%zz@" + addr,
			"nats://auditflow:" + canary + "-wrong@" + addr} {
			env := []string{"AUDITFLOW_NATS_URL=" + bad}
			for _, c := range [][]string{{bin.runner, "--changes", changes}, {bin.projector, "--sqlite-path", sqlite, "--metrics-addr", ""},
				{bin.auditflow, "test-connection", "--sqlite-path", sqlite}} {
				code, out := output(t, env, c...)
				if code == 0 || leaks(out) {
					t.Errorf("%s with %s: exit %d, want a failure without the canary:\n%s", filepath.Base(c[0]), bad, code, out)
				}
			}
		}
		code, out := output(t, []string{"AUDITFLOW_MONGO_URI=mongodb://auditor:" + canary + "@db:notaport/"}, bin.projector, "--store", "mongo", "--metrics-addr", "")
		if code == 0 || leaks(out) {
			t.Errorf("projector with an unparseable mongo URI: exit %d:\n%s", code, out)
		}
	})

	// The failing changes: one runner authenticates with the URL's
	// password, one with the nkey seed file.
	envFile := filepath.Join(dir, "change-env.txt")
	pwChanges, nkeyChanges := filepath.Join(dir, "pw"), filepath.Join(dir, "nkey")
	for _, d := range []string{pwChanges, nkeyChanges} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	changeFile(t, pwChanges, "1.yaml", fmt.Sprintf(`id: 0001-leaky
passEnv: [AUDITFLOW_MONGO_URI]
apply: |
  env > %s
  env
  set -x
  echo "url=$AUDITFLOW_MONGO_URI aws=$AWS_SESSION_TOKEN"
  cat %s
  exit 1
`, envFile, pwFile))
	changeFile(t, nkeyChanges, "1.yaml", fmt.Sprintf("id: 0001-leaky\napply: |\n  cat %s\n  printf 'ok\\n' >&2\n  exit 1\n", seedFile))
	r1 := runner(t, url, pwChanges, "leak-pw", "r-pw")
	t.Setenv("AUDITFLOW_NATS_NKEY", seedFile)
	r2 := runner(t, "nats://"+addr, nkeyChanges, "leak-nkey", "r-nkey")
	_ = os.Unsetenv("AUDITFLOW_NATS_NKEY")
	for _, r := range []*proc{r1, r2} {
		if code := r.wait(t, 60*time.Second); code != 3 || leaks(r.out.String()) || !strings.Contains(r.out.String(), "***") {
			t.Fatalf("runner: exit %d, want 3 (change failed) with its output masked:\n%s", code, r.out.String())
		}
	}

	b, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	changeEnv := "\n" + string(b)
	for _, name := range []string{"AUDITFLOW_NATS_URL", "AUDITFLOW_COUCHBASE_PASSWORD", "AUDITFLOW_COUCHBASE_PASSWORD_FILE", "AUDITFLOW_COUCHBASE_CONNSTR", "AUDITFLOW_LOG_LEVEL"} {
		if strings.Contains(changeEnv, "\n"+name+"=") {
			t.Errorf("the change's environment has the runner's %s", name)
		}
	}
	for _, name := range []string{"AUDITFLOW_MONGO_URI", "AWS_SESSION_TOKEN", "PATH", "AUDITFLOW_LOCK_TOKEN"} {
		if !strings.Contains(changeEnv, "\n"+name+"=") {
			t.Errorf("the change's environment lacks %s (passed, kept or set for it)", name)
		}
	}

	// Every message on every stream, headers included.
	_, js := natstest.ConnectURL(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var traces int
	for name, err := range streamNames(ctx, js) {
		if err != nil {
			t.Fatal(err)
		}
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		state := st.CachedInfo().State
		for seq := max(state.FirstSeq, 1); seq <= state.LastSeq; seq++ { // an empty stream has 0 and 0
			m, err := st.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if leaks(string(m.Data)) || leaks(fmt.Sprint(m.Header)) {
				t.Errorf("stream %s seq %d holds the canary: %s", name, seq, m.Data)
			}
			if strings.Contains(string(m.Data), "ExecutionFailed") && strings.Contains(string(m.Data), "***") {
				traces++
			}
		}
	}
	if traces < 2 {
		t.Errorf("%d failed executions with a masked trace on the stream, want one per runner", traces)
	}

	// A projector process: its logs, its /metrics, and the store it writes.
	db := filepath.Join(t.TempDir(), "audit.db")
	metrics := freeAddr(t)
	p := start(t, url, bin.projector, "--store", "sqlite", "--sqlite-path", db, "--metrics-addr", metrics)
	waitReady(t, metrics)
	st, err := sqlitestore.Open(ctx, db, sqlitestore.Config{SkipSchema: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	var rows []stores.Record
	eventually(t, 30*time.Second, "the projector stores both failures", func() bool {
		rows = nil
		for _, pipeline := range []string{"leak-pw", "leak-nkey"} {
			r, err := st.History(ctx, stores.HistoryQuery{Pipeline: pipeline, State: events.StateFailed})
			if err != nil {
				return false
			}
			rows = append(rows, r...)
		}
		return len(rows) == 2
	})
	for _, r := range rows {
		if leaks(fmt.Sprintf("%+v", r)) || !strings.Contains(r.ErrorTrace, "***") {
			t.Errorf("stored row: %+v", r)
		}
	}
	if code, body := get(t, metrics, "/metrics"); code != 200 || leaks(body) {
		t.Errorf("/metrics: %d, or it holds the canary", code)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, 30*time.Second); code != 0 || leaks(p.out.String()) {
		t.Errorf("projector: exit %d, or its output holds the canary:\n%s", code, p.out.String())
	}
	_ = st.Close()
	for _, f := range []string{db, db + "-wal"} {
		if b, err := os.ReadFile(f); err == nil && leaks(string(b)) {
			t.Errorf("%s holds the canary", filepath.Base(f))
		}
	}
}

// output runs a short command with env added to the test's environment
// and returns its exit code and combined output.
func output(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return 0, string(out)
}

// initWithAuth runs auditflow init where the binary has it (runners and
// projectors then find their streams), with the URL from the environment.
func initWithAuth(t *testing.T, url string) {
	t.Helper()
	code, out := output(t, []string{"AUDITFLOW_NATS_URL=" + url}, bin.auditflow, "init", "--lock-lease", lease.String())
	if code != 0 && !strings.Contains(out, "unknown command") {
		t.Fatalf("auditflow init: exit %d\n%s", code, out)
	}
}

// streamNames lists the server's streams.
func streamNames(ctx context.Context, js jetstream.JetStream) func(func(string, error) bool) {
	return func(yield func(string, error) bool) {
		l := js.StreamNames(ctx)
		for name := range l.Name() {
			if !yield(name, nil) {
				return
			}
		}
		if err := l.Err(); err != nil {
			yield("", err)
		}
	}
}

package changefile_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/runner/changefile"
)

func TestEnvironment(t *testing.T) { testEnvironment(t) }

func TestEnvironmentDirectly(t *testing.T) {
	changefile.RunDirectly(t)
	testEnvironment(t)
}

// testEnvironment: a command gets the runner's environment without its
// AUDITFLOW_* variables (its NATS credentials and store URIs), except those
// the file passes, plus the file's env: and the change's variables.
func testEnvironment(t *testing.T) {
	t.Setenv("AUDITFLOW_NATS_URL", "nats://auditflow:nats-pw@n1:4222")
	t.Setenv("AUDITFLOW_NATS_NKEY", "/run/secrets/nkey")
	t.Setenv("AUDITFLOW_COUCHBASE_PASSWORD", "cb-pw")
	t.Setenv("AUDITFLOW_MONGO_URI", "mongodb://u:mongo-pw@db/")
	t.Setenv("AUDITFLOW_LOG_LEVEL", "debug")
	t.Setenv("AUDITFLOW_DATA_DIR", "/inherited") // the runner's Options.Env says where
	t.Setenv("TARGET_DB_PASSWORD", "target-pw")  // for the change's own target system: kept
	c, dir := load(t, `id: c
env: {DB: users.db, GREETING: "hello world"}
passEnv: [AUDITFLOW_MONGO_URI, AUDITFLOW_NOT_SET]
apply: env > env.txt
`, changefile.Options{Pipeline: "billing", Env: []string{"AUDITFLOW_DATA_DIR=/data"}})
	ctx := runner.WithExecution(context.Background(), &runner.Execution{Pipeline: "billing", ChangeID: "c", ExecutionID: "exec-1", LockToken: 7})
	if err := c.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "env.txt"))
	if err != nil {
		t.Fatal(err)
	}
	env := strings.Split(strings.TrimSpace(string(b)), "\n")
	var auditflow []string
	for _, kv := range env {
		if strings.HasPrefix(kv, "AUDITFLOW_") {
			auditflow = append(auditflow, kv)
		}
	}
	slices.Sort(auditflow)
	want := []string{"AUDITFLOW_CHANGE_DIR=" + dir, "AUDITFLOW_CHANGE_ID=c", "AUDITFLOW_DATA_DIR=/data", "AUDITFLOW_EXECUTION_ID=exec-1",
		"AUDITFLOW_LOCK_TOKEN=7", "AUDITFLOW_MONGO_URI=mongodb://u:mongo-pw@db/", "AUDITFLOW_PIPELINE=billing"}
	if !slices.Equal(auditflow, want) {
		t.Errorf("AUDITFLOW_* variables:\n got %q\nwant %q", auditflow, want)
	}
	for _, kv := range []string{"DB=users.db", "GREETING=hello world", "TARGET_DB_PASSWORD=target-pw", "PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")} {
		if !slices.Contains(env, kv) {
			t.Errorf("%s missing from the command's environment", kv)
		}
	}
}

func TestInvalidEnv(t *testing.T) {
	for name, body := range map[string]string{
		"sets a runner variable":    "id: x\napply: 'true'\nenv: {AUDITFLOW_LOCK_TOKEN: '1'}\n",
		"passes a runner variable":  "id: x\napply: 'true'\npassEnv: [AUDITFLOW_CHANGE_ID]\n",
		"bad name in env":           "id: x\napply: 'true'\nenv: {'A B': x}\n",
		"bad name in passEnv":       "id: x\napply: 'true'\npassEnv: ['X=1']\n",
		"env as a list":             "id: x\napply: 'true'\nenv: [A]\n",
		"misspelt passEnv (env: A)": "id: x\napply: 'true'\npassenv: [A]\n",
		"bad name in secretEnv":     "id: x\napply: 'true'\nsecretEnv: ['A B']\n",
		"secretEnv a runner token":  "id: x\napply: 'true'\nsecretEnv: [AUDITFLOW_LOCK_TOKEN]\n",
		"secretEnv as a map":        "id: x\napply: 'true'\nsecretEnv: {A: b}\n",
	} {
		dir := t.TempDir()
		write(t, dir, "c.yaml", body)
		if _, err := changefile.Load(dir, changefile.Options{}); !errors.Is(err, changefile.ErrInvalid) {
			t.Errorf("%s: Load = %v, want ErrInvalid", name, err)
		}
	}
}

func TestSecretsMasked(t *testing.T) { testSecretsMasked(t) }

func TestSecretsMaskedDirectly(t *testing.T) {
	changefile.RunDirectly(t)
	testSecretsMasked(t)
}

// testSecretsMasked: a failing command that prints secrets every way a
// script does (env, set -x, a secret written in pieces, on stderr) shows
// none of them in its live output or in the error the runner records.
func testSecretsMasked(t *testing.T) {
	const canary = "canary-7f3a9c-secret"
	t.Setenv("MY_API_TOKEN", canary)
	var out bytes.Buffer
	c, _ := load(t, `id: c
env: {PIECE: canary-7f3a}
apply: |
  printf '%s' "$PIECE"; sleep 0.05; printf '9c-secret\n'
  env
  set -x
  echo "token is $MY_API_TOKEN"
  echo "$MY_API_TOKEN" >&2
  exit 1
`, changefile.Options{Output: &out, Secrets: []string{canary, "ab"}})
	err := c.Apply(context.Background())
	if err == nil {
		t.Fatal("the command succeeded")
	}
	for what, s := range map[string]string{"output": out.String(), "error": err.Error()} {
		if strings.Contains(s, canary) || strings.Contains(s, "9c-secret") {
			t.Errorf("%s shows the secret:\n%s", what, s)
		}
		if !strings.Contains(s, "token is ***") || !strings.Contains(s, "MY_API_TOKEN=***") {
			t.Errorf("%s: want the secret masked as ***:\n%s", what, s)
		}
	}
	if first, _, _ := strings.Cut(err.Error(), "\n"); first != "exit status 1" {
		t.Errorf("first line (the error message) = %q", first)
	}
}

func TestOwnSecretsMasked(t *testing.T) { testOwnSecretsMasked(t) }

func TestOwnSecretsMaskedDirectly(t *testing.T) {
	changefile.RunDirectly(t)
	testOwnSecretsMasked(t)
}

// testOwnSecretsMasked: with no Options.Secrets at all (a program using the
// package, not the runner), a failing command that prints its environment
// and secrets in other forms shows none of them: the variables whose names
// say they are credentials, those secretEnv: names (from the runner's
// environment and from env:, a value the file declares secret), and
// credentials it prints by their form — read from a file, in JSON, in a
// URL. A secretEnv: the commands do not have is warned about.
func testOwnSecretsMasked(t *testing.T) {
	canaries := map[string]string{
		"DB_PASS": "cnry-dbpass-1", "STRIPE_KEY": "cnry-stripe-2", "SMTP_AUTH": "cnry-smtp-3", "MY_VAR": "cnry-myvar-4",
	}
	for k, v := range canaries {
		t.Setenv(k, v)
	}
	t.Setenv("KEYBOARD", "us-intl-layout") // not a secret: stays
	printed := []string{"cnry-license-5", "cnry-file-6", "cnry-json-7", "cnry-url-8", "cnry-yaml-9"}
	var out, logs bytes.Buffer
	c, dir := load(t, `id: c
env: {LICENSE: cnry-license-5}
secretEnv: [MY_VAR, LICENSE, NOT_SET_ANYWHERE]
apply: |
  printf 'DB_PASSWORD=cnry-file-6\nuser: bob\n  password: cnry-yaml-9\n' > creds.env
  env
  cat creds.env
  echo "{\"user\": \"bob\", \"password\": \"cnry-json-7\"}"
  echo "fetching https://deploy:cnry-url-8@repo.example.com/x.tgz"
  echo "my var is $MY_VAR, license $LICENSE"
  exit 1
`, changefile.Options{Output: &out, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	err := c.Apply(context.Background())
	if err == nil {
		t.Fatal("the command succeeded")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "creds.env")); !strings.Contains(string(b), "cnry-file-6") {
		t.Fatalf("the command did not write its file: %q", b)
	}
	for what, s := range map[string]string{"output": out.String(), "error": err.Error()} {
		for _, v := range append(slices.Collect(maps.Values(canaries)), printed...) {
			if strings.Contains(s, v) {
				t.Errorf("%s shows %s:\n%s", what, v, s)
			}
		}
		for _, want := range []string{"DB_PASS=***", "STRIPE_KEY=***", "SMTP_AUTH=***", "MY_VAR=***", "LICENSE=***", "DB_PASSWORD=***",
			`"password": "***"`, "https://deploy:***@repo.example.com", "my var is ***, license ***", "KEYBOARD=us-intl-layout", "user: bob"} {
			if !strings.Contains(s, want) {
				t.Errorf("%s lacks %q:\n%s", what, want, s)
			}
		}
	}
	if !strings.Contains(logs.String(), "NOT_SET_ANYWHERE") {
		t.Errorf("no warning about the secretEnv the commands do not have:\n%s", logs.String())
	}
}

package runnercmd_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/runnercmd"
)

// TestSecretsMaskedInEmbeddedRun: a failing change that prints the
// runner's environment and secret files shows none of their secrets in the
// runner's output, its logs at debug level, or the changeLog read back
// from the store.
func TestSecretsMaskedInEmbeddedRun(t *testing.T) {
	const canary = "canary-runnercmd-51c0"
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "cb-password")
	if err := os.WriteFile(pwFile, []byte(canary+"-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AUDITFLOW_MONGO_URI", "mongodb://auditor:"+canary+"-uri@db/")
	t.Setenv("AUDITFLOW_COUCHBASE_PASSWORD", canary+"-env")
	t.Setenv("AUDITFLOW_COUCHBASE_PASSWORD_FILE", pwFile)
	t.Setenv("AUDITFLOW_LOG_LEVEL", "debug")
	changes := t.TempDir()
	body := "id: leaky\npassEnv: [AUDITFLOW_MONGO_URI]\napply: |\n  env\n  set -x\n  echo \"$AUDITFLOW_MONGO_URI\"\n  cat " + pwFile + "\n  exit 1\n"
	if err := os.WriteFile(filepath.Join(changes, "1.yaml"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCmd(t, "--embedded", "--data-dir", t.TempDir(), "--changes", changes)
	if code != runnercmd.ExitChangeFailed {
		t.Fatalf("exit %d\n%s\n%s", code, out, stderr)
	}
	if strings.Contains(out+stderr, canary) {
		t.Fatalf("a secret shows:\n%s\n%s", out, stderr)
	}
	if !strings.Contains(out, "mongodb://auditor:***@db/") || !strings.Contains(out, "leaky") {
		t.Fatalf("want the passed URI masked, and the change in the changeLog:\n%s", out)
	}
	if strings.Contains(out, "AUDITFLOW_COUCHBASE_PASSWORD=") {
		t.Fatalf("the change got the runner's AUDITFLOW_* variables:\n%s", out)
	}
}

// TestNatsSettingsAreUsageErrors: NATS settings that cannot work exit 2
// with a message that names the setting, not its secret.
func TestNatsSettingsAreUsageErrors(t *testing.T) {
	changes, files := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(changes, "1.yaml"), []byte("id: x\napply: 'true'\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(files, "seed")
	if err := os.WriteFile(seed, []byte("canary-not-a-seed\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, args := range map[string][]string{
		"creds and nkey":  {"--nats-creds", seed, "--nats-nkey", seed},
		"not a seed":      {"--nats-nkey", seed},
		"unparseable url": {"--nats-url", "nats://auditflow:canary-pw@127.0.0.1:notaport"},
	} {
		code, out, stderr := runCmd(t, append([]string{"--changes", changes}, args...)...)
		if code != runnercmd.ExitUsage || strings.Contains(out+stderr, "canary") || !strings.Contains(stderr, "--nats-") {
			t.Errorf("%s: exit %d, want %d naming the flag without its secret\n%s%s", name, code, runnercmd.ExitUsage, out, stderr)
		}
	}
}

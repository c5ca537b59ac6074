package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/console"
)

func runCLI(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := cli.Main(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestConsoleKeyNew: the key is printed once, and only its hash and role
// reach the keys file, which only its owner may read.
func TestConsoleKeyNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys")
	code, out, errOut := runCLI("console", "key", "new", "--keys-file", path, "--name", "alice")
	if code != cli.ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	key := strings.TrimSpace(out)
	if !strings.HasPrefix(key, console.KeyPrefix) || strings.Contains(errOut, key) {
		t.Fatalf("stdout %q, stderr %q", out, errOut)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), key) || !strings.HasPrefix(string(b), "alice read sha256:") {
		t.Errorf("keys file holds %q", b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("keys file mode %v, want 0600", fi.Mode().Perm())
	}
	keys, err := console.LoadKeys(path)
	if err != nil || len(keys) != 1 || keys[0].Name != "alice" || keys[0].Role != console.RoleRead {
		t.Errorf("LoadKeys = %+v, %v", keys, err)
	}
}

func TestConsoleRefusesBadSettings(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"console", "--listen", "0.0.0.0:0", "--insecure-no-auth"},
		{"console", "--listen", ":0", "--insecure-no-auth"},
		{"console", "--listen", "127.0.0.1:0"}, // no keys
		{"console", "--listen", "127.0.0.1:0", "--keys-file", filepath.Join(dir, "missing")},
		{"console", "--listen", "127.0.0.1:0", "--insecure-no-auth", "--tls-cert", "c.pem"},
		{"console", "key", "new", "--keys-file", filepath.Join(dir, "k"), "--name", "x", "--role", "admin"},
		{"console", "key", "new", "--keys-file", filepath.Join(dir, "k"), "--name", "<b>"},
	} {
		code, _, errOut := runCLI(append([]string{"--sqlite-path", filepath.Join(dir, "audit.db")}, args...)...)
		if code != cli.ExitUsage || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q; want %d with a reason", args, code, errOut, cli.ExitUsage)
		}
	}
}

package projectorcmd_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/projectorcmd"
)

// TestSecretsStayOutOfHelpAndErrors: -h and the errors of settings that
// cannot work name the setting, never the secret in it.
func TestSecretsStayOutOfHelpAndErrors(t *testing.T) {
	const canary = "canary-projectorcmd-9d21"
	t.Setenv("AUDITFLOW_NATS_URL", "nats://auditflow:"+canary+"@127.0.0.1:1")
	t.Setenv("AUDITFLOW_COUCHBASE_CONNSTR", "couchbase://u:"+canary+"@cb")
	t.Setenv("AUDITFLOW_COUCHBASE_PASSWORD", canary)
	var help bytes.Buffer
	if code := projectorcmd.Main(context.Background(), []string{"-h"}, &help, io.Discard); code != projectorcmd.ExitOK {
		t.Fatalf("-h: exit %d", code)
	}
	if strings.Contains(help.String(), canary) || !strings.Contains(help.String(), "nats://auditflow:redacted@") || !strings.Contains(help.String(), "-nats-nkey") {
		t.Fatalf("-h:\n%s", help.String())
	}
	seed := filepath.Join(t.TempDir(), "seed")
	if err := os.WriteFile(seed, []byte(canary+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(t.TempDir(), "audit.db")
	for name, c := range map[string]struct {
		args []string
		code int
	}{
		"unparseable nats url": {[]string{"--sqlite-path", db, "--nats-url", "nats://auditflow:" + canary + "@127.0.0.1:port"}, projectorcmd.ExitUsage},
		"creds and nkey":       {[]string{"--sqlite-path", db, "--nats-creds", seed, "--nats-nkey", seed}, projectorcmd.ExitUsage},
		"not a seed":           {[]string{"--sqlite-path", db, "--nats-nkey", seed}, projectorcmd.ExitUsage},
		"unparseable mongo":    {[]string{"--store", "mongo", "--mongo-uri", "mongodb://auditor:" + canary + "%zz@db/"}, projectorcmd.ExitError},
		"mongo uri file":       {[]string{"--store", "mongo", "--mongo-uri-file", seed}, projectorcmd.ExitUsage},
	} {
		var stderr bytes.Buffer
		code := projectorcmd.Main(context.Background(), append(c.args, "--metrics-addr", "", "--log-level", "debug"), io.Discard, &stderr)
		if code != c.code || strings.Contains(stderr.String(), canary) {
			t.Errorf("%s: exit %d, want %d without the secret:\n%s", name, code, c.code, stderr.String())
		}
	}
}

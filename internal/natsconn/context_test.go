package natsconn_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/internal/natstest"
)

// TestContext: --context NAME connects as the NATS CLI's context NAME
// says, unless a flag says otherwise; a missing context is a usage error
// naming it.
func TestContext(t *testing.T) {
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	cfgHome := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfgHome)
	dir := filepath.Join(cfgHome, "nats", "context")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	body := `{"description": "test", "url": "` + srv.ClientURL() + `", "user": "ops", "password": "hunter2-pw", "color_scheme": "", "jetstream_domain": ""}`
	if err := os.WriteFile(filepath.Join(dir, "test.json"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	c := natsconn.Config{URL: nats.DefaultURL, Context: "test", Name: "context-test"}
	nc, err := natsconn.Connect(c, natstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if !slices.Contains(c.Secrets(), "hunter2-pw") {
		t.Fatalf("Secrets %v miss the context's password", c.Secrets())
	}

	c = natsconn.Config{URL: "nats://127.0.0.1:1", Context: "test"} // an explicit URL wins
	if _, err := natsconn.Connect(c, natstest.Logger(t)); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("explicit URL: %v", err)
	}
	c = natsconn.Config{URL: nats.DefaultURL, Context: "prod"}
	if err := c.Validate(); !errors.Is(err, natsconn.ErrInvalidConfig) || !strings.Contains(err.Error(), "prod") {
		t.Fatalf("missing context: %v", err)
	}
	c = natsconn.Config{URL: nats.DefaultURL, Context: "../etc/passwd"}
	if err := c.Validate(); !errors.Is(err, natsconn.ErrInvalidConfig) {
		t.Fatalf("context name with a path: %v", err)
	}
}

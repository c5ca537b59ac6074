package embedded_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/embedded"
)

// TestStartFailsAtOnce: a data directory that cannot be created, or that
// another process's server holds, fails in well under the server's 30 s
// readiness wait, naming the directory.
func TestStartFailsAtOnce(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := embedded.Start(embedded.Config{DataDir: filepath.Join(file, "nats")})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(file, "nats")) || time.Since(start) > 5*time.Second {
		t.Fatalf("Start under a file = %v after %s", err, time.Since(start))
	}

	srv, err := embedded.Start(embedded.Config{DataDir: filepath.Join(dir, "nats")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = embedded.Start(embedded.Config{DataDir: filepath.Join(dir, "nats")})
	if err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second Start on one directory = %v", err)
	}
	srv.Close()
	srv, err = embedded.Start(embedded.Config{DataDir: filepath.Join(dir, "nats")}) // released by Close
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
}

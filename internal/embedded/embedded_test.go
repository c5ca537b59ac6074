package embedded_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

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

// TestShareJoins: with Share, a second Start on a served directory joins
// the first process's server over 127.0.0.1 with its token: both see one
// stream. Closing the joined one leaves the server up; closing the server
// removes its address file, and a later Start serves the directory again.
// Without the token the port refuses clients.
func TestShareJoins(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nats")
	first, err := embedded.Start(embedded.Config{DataDir: dir, Share: true})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	info, err := os.Stat(filepath.Join(dir, "server.json"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("server.json: %v, mode %v; want 0600", err, info)
	}
	if _, err := nats.Connect(first.ClientURL(), nats.NoReconnect()); err == nil {
		t.Fatal("the shared port let a client in without the token")
	}

	second, err := embedded.Start(embedded.Config{DataDir: dir, Share: true})
	if err != nil {
		t.Fatalf("joining: %v", err)
	}
	if !second.Joined() || first.Joined() {
		t.Fatalf("Joined: first %v, second %v", first.Joined(), second.Joined())
	}
	ncA, err := first.Connect("a")
	if err != nil {
		t.Fatal(err)
	}
	defer ncA.Close()
	ncB, err := second.Connect("b")
	if err != nil {
		t.Fatal(err)
	}
	sub, err := ncA.SubscribeSync("hello")
	if err != nil {
		t.Fatal(err)
	}
	if err := ncA.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := ncB.Publish("hello", []byte("from the joined process")); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "from the joined process" {
		t.Fatalf("message across the shared server: %v, %v", m, err)
	}
	ncB.Close()
	second.Close() // the joined side owns nothing
	if _, err := os.Stat(filepath.Join(dir, "server.json")); err != nil {
		t.Fatalf("closing the joined side removed the server's address: %v", err)
	}
	if !ncA.IsConnected() {
		t.Fatal("closing the joined side stopped the server")
	}

	// Without Share, the directory stays one process's.
	if _, err := embedded.Start(embedded.Config{DataDir: dir}); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("Start without Share on a served directory = %v", err)
	}
	ncA.Close()
	first.Close()
	if _, err := os.Stat(filepath.Join(dir, "server.json")); !os.IsNotExist(err) {
		t.Fatalf("server.json after Close: %v", err)
	}
	again, err := embedded.Start(embedded.Config{DataDir: dir, Share: true})
	if err != nil || again.Joined() {
		t.Fatalf("Start after the server closed: %v (joined %v)", err, again != nil && again.Joined())
	}
	again.Close()
}

// TestShareWithoutServerFails: a directory held by a process that does
// not share it (no server.json) fails as before, saying it is in use.
func TestShareWithoutServerFails(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nats")
	srv, err := embedded.Start(embedded.Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	start := time.Now()
	_, err = embedded.Start(embedded.Config{DataDir: dir, Share: true})
	if err == nil || !strings.Contains(err.Error(), "in use by another process") || !strings.Contains(err.Error(), "could not be joined") {
		t.Fatalf("joining an unshared server = %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("took %s", time.Since(start))
	}
}

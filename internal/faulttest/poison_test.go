//go:build unix

package faulttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// TestProjectorProcessSurvivesPoison publishes, by hand as an attacker
// with publish rights would, every kind of message a projector cannot
// store, each followed by a valid event on another change, to a projector
// process. Every valid event is stored within seconds; the poison is
// dead-lettered (or, a newer schema version, held, which /readyz reports);
// SIGTERM stops the projector promptly, and a restarted projector does not
// stall on any of it.
func TestProjectorProcessSurvivesPoison(t *testing.T) {
	srv := startServer(t)
	initAuditflow(t, srv.URL)
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "audit.db")
	addr := freeAddr(t)
	startProjector := func() *proc {
		return start(t, srv.URL, bin.projector, "--store", "sqlite", "--sqlite-path", dbPath, "--metrics-addr", addr)
	}
	p := startProjector()
	waitReady(t, addr)
	nc, _ := natstest.ConnectURL(t, srv.URL)
	st, err := sqlitestore.Open(context.Background(), dbPath, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })

	valid := func(i int) []byte {
		e := events.New(events.ExecutionStarted, "poison", fmt.Sprintf("valid-%d", i))
		e.ExecutionID = "exec"
		b, err := events.Encode(e)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	mismatched := func() []byte { // change b's event, for change a's subject
		e := events.New(events.ExecutionFailed, "poison", "b")
		e.ExecutionID, e.ErrorMessage = "exec", "forged"
		b, _ := events.Encode(e)
		return b
	}
	newer := func() []byte {
		var env map[string]any
		_ = json.Unmarshal(valid(99), &env)
		env["data"].(map[string]any)["schemaVersion"] = events.SchemaVersion + 1
		env["data"].(map[string]any)["changeId"], env["subject"] = "next-version", "next-version"
		b, _ := json.Marshal(env)
		return b
	}
	maxPayload := int(nc.MaxPayload())
	poison := []struct {
		name, subject string
		data          []byte
	}{
		{"invalid JSON", "audit.exec.poison.c1", []byte("garbage")},
		{"unknown type", "audit.exec.poison.c2", bytes.Replace(valid(0), []byte("ExecutionStarted"), []byte("ExecutionExploded"), 1)},
		{"near-max-size junk", "audit.exec.poison.c4", bytes.Repeat([]byte("x"), maxPayload-64)},
		{"subject and payload disagree", "audit.exec.poison.a", mismatched()},
		{"newer schema version", "audit.exec.poison.next-version", newer()},
	}
	for i, pc := range poison {
		if err := nc.PublishMsg(&nats.Msg{Subject: pc.subject, Data: pc.data}); err != nil {
			t.Fatalf("%s: %v", pc.name, err)
		}
		sent := time.Now()
		if err := nc.Publish(fmt.Sprintf("audit.exec.poison.valid-%d", i), valid(i)); err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, "the valid event after "+pc.name+" is stored", func() bool {
			rows, err := st.History(context.Background(), stores.HistoryQuery{Pipeline: "poison", ChangeID: fmt.Sprintf("valid-%d", i)})
			return err == nil && len(rows) == 1
		})
		t.Logf("%s: the next valid event was stored %s after it", pc.name, time.Since(sent).Round(time.Millisecond))
	}
	for _, change := range []string{"a", "b"} {
		if rows, _ := st.History(context.Background(), stores.HistoryQuery{Pipeline: "poison", ChangeID: change}); len(rows) != 0 {
			t.Fatalf("a mismatched event was stored as change %s: %+v", change, rows)
		}
	}
	eventually(t, 15*time.Second, "/readyz reports the held newer event", func() bool {
		code, body := get(t, addr, "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "upgrade needed")
	})
	if code, _ := get(t, addr, "/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d: a held event must not fail liveness", code)
	}
	info, err := srv.JS.Stream(context.Background(), "AUDIT_DEADLETTER")
	if err != nil {
		t.Fatal(err)
	}
	if n := info.CachedInfo().State.Msgs; n != 4 {
		t.Fatalf("dead letters: %d, want 4 (all but the newer version)", n)
	}

	stopped := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("projector exited %d after SIGTERM", code)
	}
	t.Logf("SIGTERM with poison on the stream: exited after %s", time.Since(stopped).Round(time.Millisecond))
	if took := time.Since(stopped); took > 6*time.Second {
		t.Fatalf("shutdown took %s", took)
	}
	// A restarted projector does not stall on any of it.
	startProjector()
	waitReady(t, addr, "upgrade needed")
	if err := nc.Publish("audit.exec.poison.valid-100", valid(100)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "an event after the restart is stored", func() bool {
		rows, err := st.History(context.Background(), stores.HistoryQuery{Pipeline: "poison", ChangeID: "valid-100"})
		return err == nil && len(rows) == 1
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func get(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitReady waits for /readyz to answer 200, or 503 for one of the
// accepted reasons.
func waitReady(t *testing.T, addr string, accept ...string) {
	t.Helper()
	eventually(t, 20*time.Second, "the projector serves /readyz", func() bool {
		code, body := get(t, addr, "/readyz")
		if code == http.StatusOK {
			return true
		}
		for _, a := range accept {
			if code == http.StatusServiceUnavailable && strings.Contains(body, a) {
				return true
			}
		}
		return false
	})
}

// TestGarbageOnAChangeSubject: junk published on a real change's subject
// (the stream forbids deleting it) must not block the pipeline for good:
// the runner stops at it and explains (exit 4, naming the sequence and the
// command), `auditflow issue fix` records a decision after it, and the
// next run proceeds.
func TestGarbageOnAChangeSubject(t *testing.T) {
	srv := startServer(t)
	initAuditflow(t, srv.URL)
	dir := t.TempDir()
	changeFile(t, dir, "1.yaml", "id: 0001-first\norder: '1'\napply: 'true'\n")
	changeFile(t, dir, "2.yaml", "id: 0002-change\norder: '2'\napply: 'true'\n")
	if code := runner(t, srv.URL, dir, "real", "r1").wait(t, 30*time.Second); code != 0 {
		t.Fatalf("first run exited %d", code)
	}
	nc, _ := natstest.ConnectURL(t, srv.URL)
	if err := nc.Publish("audit.exec.real.0002-change", []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	blocked := runner(t, srv.URL, dir, "real", "r2")
	if code := blocked.wait(t, 30*time.Second); code != 4 || !strings.Contains(blocked.out.String(), "issue fix") {
		t.Fatalf("run over garbage: exit %d, want 4 with guidance:\n%s", code, blocked.out.String())
	}
	fix := start(t, srv.URL, bin.auditflow, "--store", "sqlite", "--sqlite-path", filepath.Join(dir, "cli.db"), "issue", "fix",
		"-p", "real", "-c", "0002-change", "-r", "applied", "--reason", "junk published by hand; the change was applied", "--operator", "carol")
	if code := fix.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("issue fix exited %d:\n%s", code, fix.out.String())
	}
	next := runner(t, srv.URL, dir, "real", "r3")
	if code := next.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("run after the fix exited %d", code)
	}
}

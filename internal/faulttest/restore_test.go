//go:build unix

package faulttest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/producer"
)

// TestRestoreFromMirror: with a mirror made by auditflow init --mirror, a
// deleted audit stream stops runners (nothing is applied twice) and
// auditflow restore brings the whole history back: a store built before
// the deletion verifies against the restored stream, every signature
// holds, the next runner skips every applied change and applies only a new
// one, and the promoted mirror is replaced by a new one.
func TestRestoreFromMirror(t *testing.T) {
	srv := startServer(t)
	cli := func(args ...string) *proc { return start(t, srv.URL, bin.auditflow, args...) }
	must := func(p *proc, code int, what string) string {
		t.Helper()
		if got := p.wait(t, 60*time.Second); got != code {
			t.Fatalf("%s: exit %d, want %d:\n%s", what, got, code, p.out.String())
		}
		return p.out.String()
	}
	must(cli("init", "--lock-lease", lease.String(), "--mirror", "AUDIT_MIRROR"), 0, "init --mirror")

	dir := t.TempDir()
	key := filepath.Join(t.TempDir(), "runner.nk")
	entry := must(cli("keys", "new", "--out", key, "--name", "runner-a", "--role", "runner", "--pipeline", "billing"), 0, "keys new")
	trustFile := filepath.Join(t.TempDir(), "trust.yaml")
	if err := os.WriteFile(trustFile, []byte("keys:\n"+entry[strings.Index(entry, "  - key:"):]), 0o600); err != nil {
		t.Fatal(err)
	}
	journal := filepath.Join(dir, "journal")
	for i := 1; i <= 3; i++ {
		changeFile(t, dir, fmt.Sprintf("%d.yaml", i), fmt.Sprintf("id: 000%d-change\norder: '%d'\napply: echo %d >> %s\n", i, i, i, journal))
	}
	if r := runner(t, srv.URL, dir, "billing", "runner-a", "--signing-key", key); r.wait(t, 60*time.Second) != 0 {
		t.Fatalf("first run:\n%s", r.out.String())
	}
	db := filepath.Join(t.TempDir(), "audit.db")
	store := []string{"--store", "sqlite", "--sqlite-path", db, "--trust", trustFile}
	must(cli(append(store, "replay")...), 0, "replay before the deletion")
	audit, err := srv.JS.Stream(context.Background(), producer.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	want := audit.CachedInfo().State.LastSeq
	mirror, err := srv.JS.Stream(context.Background(), "AUDIT_MIRROR")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the mirror holds every event", func() bool {
		info, err := mirror.Info(context.Background())
		return err == nil && info.State.LastSeq == want
	})

	if err := srv.JS.DeleteStream(context.Background(), producer.DefaultStreamName); err != nil {
		t.Fatal(err)
	}
	if r := runner(t, srv.URL, dir, "billing", "runner-b", "--signing-key", key); r.wait(t, 60*time.Second) != 1 {
		t.Fatalf("runner with the stream deleted: want exit 1:\n%s", r.out.String())
	}

	out := must(cli("restore", "--from", "AUDIT_MIRROR"), 0, "restore")
	if !strings.Contains(out, fmt.Sprintf("1..%d", want)) || !strings.Contains(out, "init --mirror") {
		t.Fatalf("restore's report does not give the sequences 1..%d and the next step:\n%s", want, out)
	}
	must(cli("restore", "--from", "AUDIT_MIRROR"), 5, "restore over the restored stream")
	must(cli(append(store, "verify")...), 0, "verify the store built before the deletion, signatures included")

	if r := runner(t, srv.URL, dir, "billing", "runner-b", "--signing-key", key); r.wait(t, 60*time.Second) != 0 {
		t.Fatalf("runner after the restore:\n%s", r.out.String())
	}
	changeFile(t, dir, "4.yaml", fmt.Sprintf("id: 0004-change\norder: '4'\napply: echo 4 >> %s\n", journal))
	if r := runner(t, srv.URL, dir, "billing", "runner-c", "--signing-key", key); r.wait(t, 60*time.Second) != 0 {
		t.Fatalf("runner with a new change:\n%s", r.out.String())
	}
	if b, _ := os.ReadFile(journal); string(b) != "1\n2\n3\n4\n" {
		t.Fatalf("journal %q: every change must be applied exactly once, across the deletion and the restore", b)
	}
	must(cli(append(store, "replay")...), 0, "replay after the restore")
	must(cli(append(store, "verify")...), 0, "verify after the restore")

	must(cli("init", "--lock-lease", lease.String(), "--mirror", "AUDIT_MIRROR"), 3, "init --mirror on the promoted copy")
	must(cli("init", "--lock-lease", lease.String(), "--mirror", "AUDIT_MIRROR_2"), 0, "a new mirror")
	mirror2, err := srv.JS.Stream(context.Background(), "AUDIT_MIRROR_2")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the new mirror holds every event", func() bool {
		info, err := mirror2.Info(context.Background())
		return err == nil && info.State.Msgs == want+2
	})
}

package projector_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// TestNewNeverCreatesStreams: without Config.CreateStreams, New reports a
// missing audit stream (producer.ErrNoStream) and then missing projector
// streams (ErrNoStream) by name, creating none; EnsureStreams, as auditflow
// init uses it, creates them all and is idempotent.
func TestNewNeverCreatesStreams(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	st, err := sqlitestore.Open(ctx, filepath.Join(t.TempDir(), "audit.db"), sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	cfg := projector.Config{StoreName: "sqlite", Logger: natstest.Logger(t)}
	if _, err := projector.New(ctx, srv.JS, st, cfg); !errors.Is(err, producer.ErrNoStream) {
		t.Fatalf("New without the audit stream = %v, want producer.ErrNoStream", err)
	}
	if _, err := producer.EnsureStream(ctx, srv.JS, producer.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	_, err = projector.New(ctx, srv.JS, st, cfg)
	if !errors.Is(err, projector.ErrNoStream) || !strings.Contains(err.Error(), projector.DeadLetterStream) || !strings.Contains(err.Error(), "auditflow init") {
		t.Fatalf("New without the dead-letter stream = %v, want ErrNoStream naming it and auditflow init", err)
	}
	if names := streamNames(t, srv); len(names) != 1 {
		t.Fatalf("streams after New: %v, want only AUDIT", names)
	}
	for range 2 {
		if err := projector.EnsureStreams(ctx, srv.JS, projector.Config{}); err != nil {
			t.Fatal(err)
		}
	}
	if names := streamNames(t, srv); len(names) != 1+len(projector.Streams(projector.Config{})) {
		t.Fatalf("streams after EnsureStreams: %v", names)
	}
	if _, err := projector.New(ctx, srv.JS, st, cfg); err != nil {
		t.Fatalf("New once the streams exist: %v", err)
	}
}

func streamNames(t *testing.T, srv *natstest.Server) []string {
	t.Helper()
	var names []string
	l := srv.JS.StreamNames(context.Background())
	for n := range l.Name() {
		names = append(names, n)
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

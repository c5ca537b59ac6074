package sqlitestore_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
	"github.com/auditflow/auditflow/stores/storetest"
)

// newStore opens stores in one file, with the namespace as table prefix.
func newStore(path string) storetest.NewStore {
	return func(t testing.TB, ns string) stores.Store {
		s, err := sqlitestore.Open(context.Background(), path, sqlitestore.Config{
			ChangeLogTable: ns + "_changeLog", IssuesTable: ns + "_issues", CheckpointsTable: ns + "_checkpoints",
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
}

func TestConformance(t *testing.T) {
	storetest.Run(t, newStore(filepath.Join(t.TempDir(), "audit.db")), storetest.Features{AtomicBatch: true})
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []sqlitestore.Config{
		{ChangeLogTable: "drop table;"},
		{IssuesTable: "1abc"},
		{ChangeLogTable: "same", IssuesTable: "SAME"},
	} {
		_, err := sqlitestore.Open(context.Background(), filepath.Join(t.TempDir(), "x.db"), cfg)
		if !errors.Is(err, stores.ErrInvalidConfig) {
			t.Errorf("Open(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := sqlitestore.Open(context.Background(), "", sqlitestore.Config{}); !errors.Is(err, stores.ErrInvalidConfig) {
		t.Errorf("Open with no path = %v", err)
	}
}

package sqlitestore_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// TestDeletedOrReplacedFileFailsWrites: a database file deleted or
// replaced under an open store fails every write and checkpoint read with
// ErrFileGone, instead of writing into an unlinked file nobody can open
// again (a projector would acknowledge events into it).
func TestDeletedOrReplacedFileFailsWrites(t *testing.T) {
	ctx := context.Background()
	for _, how := range []string{"deleted", "replaced"} {
		t.Run(how, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.db")
			s, err := sqlitestore.Open(ctx, path, sqlitestore.Config{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			if err := s.Apply(ctx, stores.Batch{Checkpoint: "c", Through: 1}); err != nil {
				t.Fatalf("a write before: %v", err)
			}
			for _, f := range []string{path, path + "-wal", path + "-shm"} {
				if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
					t.Fatal(err)
				}
			}
			if how == "replaced" {
				other, err := sqlitestore.Open(ctx, path, sqlitestore.Config{})
				if err != nil {
					t.Fatal(err)
				}
				_ = other.Close()
			}
			if err := s.Apply(ctx, stores.Batch{Checkpoint: "c", Through: 2}); !errors.Is(err, sqlitestore.ErrFileGone) {
				t.Fatalf("a write after the file was %s: %v, want ErrFileGone", how, err)
			}
			if _, err := s.Checkpoint(ctx, "c"); !errors.Is(err, sqlitestore.ErrFileGone) {
				t.Fatalf("a checkpoint read after the file was %s: %v, want ErrFileGone", how, err)
			}
		})
	}
}

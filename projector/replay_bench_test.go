package projector_test

import (
	"path/filepath"
	"testing"

	"github.com/auditflow/auditflow/internal/storebench"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// BenchmarkReplaySQLite: replay into SQLite (WAL, synchronous=FULL) over
// its same-run ceilings — the stream read alone and the same events
// inserted in bulk — and 4 writers over one (SQLite has one writer at a
// time: expect no gain there; remote stores are where writers pay):
//
//	go test ./projector -run '^$' -bench ReplaySQLite -benchtime 3x
func BenchmarkReplaySQLite(b *testing.B) {
	storebench.BenchReplay(b, func(t testing.TB, _ string) stores.Store {
		st, err := sqlitestore.Open(b.Context(), filepath.Join(t.TempDir(), "audit.db"), sqlitestore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st
	}, storebench.ReplayBenchConfig{Events: 50_000})
}

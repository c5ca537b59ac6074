package cli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// TestListingsReadEveryIssue: a store returns at most stores.MaxLimit
// rows per call; issue list and stats page through all of them.
func TestListingsReadEveryIssue(t *testing.T) {
	ctx := context.Background()
	t.Chdir(t.TempDir())
	path := filepath.Join(t.TempDir(), "audit.db")
	st, err := sqlitestore.Open(ctx, path, sqlitestore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	n := stores.MaxLimit + 5
	recs := make([]stores.Record, n)
	for i := range recs {
		e := events.New(events.ExecutionFailed, "big", fmt.Sprintf("%06d-change", i))
		e.ExecutionID, e.ErrorMessage = fmt.Sprintf("exec-%d", i), "nope"
		recs[i] = stores.Record{Seq: uint64(i + 1), Event: e}
	}
	if err := st.Apply(ctx, stores.Batch{Checkpoint: "test", Records: recs}); err != nil {
		t.Fatal(err)
	}
	_ = st.Close()

	flags := []string{"--nats-url", "nats://127.0.0.1:1", "--sqlite-path", path, "--json"}
	code, out, stderr := auditflow(t, append(flags, "issue", "list")...)
	var issues []json.RawMessage
	if code != cli.ExitOK || json.Unmarshal([]byte(out), &issues) != nil || len(issues) != n {
		t.Fatalf("issue list: exit %d, %d issues, want %d\n%s", code, len(issues), n, stderr)
	}
	code, out, stderr = auditflow(t, append(flags, "stats", "--since", "87600h")...)
	if code != cli.ExitOK || !strings.Contains(out, fmt.Sprintf(`"openIssues": %d`, n)) || !strings.Contains(out, fmt.Sprintf(`"FAILED": %d`, n)) {
		t.Fatalf("stats: exit %d\n%s\n%s", code, out, stderr)
	}
}

package cli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
)

// TestRestoreSaysWhatTheMirrorMissed: the audit stream is lost while its
// mirror is behind (events 6..8 stored, the mirror at 5): restore brings
// back 1..5 and, since a projector's AuditWrite that survives names
// sequence 8, exits 3 saying 3 sequences are missing. With no record
// beyond the mirror, it exits 0.
func TestRestoreSaysWhatTheMirrorMissed(t *testing.T) {
	for _, tc := range []struct {
		name     string
		recorded uint64 // the highest sequence an AuditWrite names
		code     int
		says     string
	}{
		{"behind", 8, cli.ExitProblems, "3 sequences (6..8) were stored on AUDIT but never reached the mirror AUDIT_MIRROR"},
		{"caught-up", 5, cli.ExitOK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.StartWith(t, embedded.Config{Port: -1})
			t.Chdir(t.TempDir())
			url := srv.ClientURL()
			if code, out, errOut := auditflow(t, "--nats-url", url, "init", "--mirror", "AUDIT_MIRROR"); code != cli.ExitOK {
				t.Fatalf("init: exit %d\n%s\n%s", code, out, errOut)
			}
			ctx := context.Background()
			p, err := producer.New(ctx, srv.JS, producer.Config{Stream: producer.StreamConfig{}})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 5 {
				e := events.New(events.ExecutionStarted, "billing", "0001-x")
				e.ExecutionID = fmt.Sprint(i)
				if _, err := p.Publish(ctx, e); err != nil {
					t.Fatal(err)
				}
			}
			mirror, err := srv.JS.Stream(ctx, "AUDIT_MIRROR")
			if err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if info, err := mirror.Info(ctx); err == nil && info.State.LastSeq == 5 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the mirror never held 5 events")
				}
			}
			// What a projector recorded of events the mirror never got
			// (the stream's leader lost while the mirror was stalled).
			w, _ := json.Marshal(projector.AuditWrite{Store: "sqlite", Consumer: "projector-sqlite", Count: 3, FirstSeq: tc.recorded - 2, LastSeq: tc.recorded,
				Through: tc.recorded, At: time.Now()})
			if _, err := srv.JS.Publish(ctx, projector.DefaultWritesPrefix+".sqlite", w); err != nil {
				t.Fatal(err)
			}
			if err := srv.JS.DeleteStream(ctx, producer.DefaultStreamName); err != nil {
				t.Fatal(err)
			}
			code, out, errOut := auditflow(t, "--nats-url", url, "restore", "--from", "AUDIT_MIRROR")
			if code != tc.code || !strings.Contains(out+errOut, tc.says) {
				t.Fatalf("restore: exit %d, want %d saying %q\n%s\n%s", code, tc.code, tc.says, out, errOut)
			}
			t.Logf("restore: exit %d\n%s\n%s", code, out, errOut)
		})
	}
}

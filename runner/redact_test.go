package runner_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/redact"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/runner"
)

// TestRedactMasksWhatIsRecorded: with Config.Redact, the text of a Go
// Apply's and Rollback's errors is masked in the events (error message
// and trace), the logs and the returned error, while errors.Is still sees
// the original error.
func TestRedactMasksWhatIsRecorded(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	var logs bytes.Buffer
	prod, err := producer.New(ctx, srv.JS, producer.Config{CreateStream: true, RetryFor: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	locker, err := lock.New(ctx, srv.JS, lock.Config{CreateBucket: true, Lease: lease, Owner: "r"})
	if err != nil {
		t.Fatal(err)
	}
	r, err := runner.New(prod, locker, runner.Config{Pipeline: "p", RunnerID: "r", Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Redact: redact.NewOutputMasker("known-secret-1").String})
	if err != nil {
		t.Fatal(err)
	}
	sentinel := errors.New("refused")
	c := runner.Change{ID: "c", Order: "1",
		Apply: func(context.Context) error {
			return fmt.Errorf("connect with password=hunter22-apply: %w\nDB_PASS=hunter22-trace known-secret-1", sentinel)
		},
		Rollback: func(context.Context) error {
			return errors.New("rollback: {\"api_key\": \"hunter22-rollback\"} via https://u:hunter22-url@h/")
		}}
	_, err = r.Run(ctx, []runner.Change{c})
	var ce *runner.ChangeError
	if !errors.As(err, &ce) || !errors.Is(ce.Cause, sentinel) || ce.State != events.StateRollbackFailed {
		t.Fatalf("Run = %v, want a ChangeError in ROLLBACK_FAILED whose cause is the sentinel", err)
	}
	secrets := []string{"hunter22", "known-secret-1"}
	var failed, rbFailed events.Event
	for _, e := range natstest.ReadEvents(t, srv.JS, producer.DefaultStreamName) {
		for _, s := range secrets {
			if strings.Contains(string(e.Data), s) {
				t.Errorf("the %s event holds %s: %s", e.Type, s, e.Data)
			}
		}
		switch e.Type {
		case events.ExecutionFailed:
			failed = e.Event
		case events.RollbackFailed:
			rbFailed = e.Event
		}
	}
	// An unquoted value runs to a space, here taking the colon with it.
	if failed.ErrorMessage != "connect with password=*** refused" || !strings.HasSuffix(failed.ErrorTrace, "\nDB_PASS=***") ||
		!strings.Contains(rbFailed.ErrorMessage, `{"api_key": "***"} via https://u:***@h/`) {
		t.Errorf("recorded %q / %q / %q", failed.ErrorMessage, failed.ErrorTrace, rbFailed.ErrorMessage)
	}
	for what, text := range map[string]string{"logs": logs.String(), "error": err.Error() + "\n" + ce.Rollback.Error()} {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("the %s hold %s:\n%s", what, s, text)
			}
		}
	}
}

package cli_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/cli"
)

// TestReplayFlags: replay refuses start flags that contradict each other
// or --reset (which rebuilds from the first event) before it connects
// anywhere, with exit 2; the ones it accepts get as far as connecting.
func TestReplayFlags(t *testing.T) {
	common := []string{"--store", "sqlite", "--sqlite-path", t.TempDir() + "/x.db", "--nats-url", "nats://127.0.0.1:1", "replay"}
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"--reset", "--since", "24h"}, cli.ExitUsage, "--reset"},
		{[]string{"--reset", "--from-seq", "100"}, cli.ExitUsage, "--reset"},
		{[]string{"--from-seq", "100", "--since", "24h"}, cli.ExitUsage, "give one"},
		{[]string{"--from-seq", "0"}, cli.ExitUsage, "start at 1"},
		{[]string{"--since", "-5h"}, cli.ExitUsage, "negative"},
		{[]string{"--since", "yesterday"}, cli.ExitUsage, "RFC 3339"},
		{[]string{"--since", "2999-01-01T00:00:00Z"}, cli.ExitUsage, "future"},
		{[]string{"--since", ""}, cli.ExitUsage, "duration"},
		// Accepted: they fail later, connecting to nowhere.
		{[]string{"--since", "90m"}, cli.ExitError, ""},
		{[]string{"--since", "2026-01-02T15:04:05+02:00"}, cli.ExitError, ""},
		{[]string{"--from-seq", "7"}, cli.ExitError, ""},
		{[]string{"--reset"}, cli.ExitError, ""},
	} {
		var out, errOut bytes.Buffer
		code := cli.Main(context.Background(), append(append([]string{}, common...), c.args...), &out, &errOut)
		if code != c.code || !strings.Contains(errOut.String(), c.says) {
			t.Errorf("replay %v: exit %d, want %d saying %q\n%s", c.args, code, c.code, c.says, errOut.String())
		}
	}
}

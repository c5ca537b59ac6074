package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/trusttest"
)

// TestFeedCommand: auditflow feed --trust writes a line per message, each
// a CloudEvents 1.0 document whose auditflowtrust is "trusted" or names the
// forgery's problem; --change keeps one change; without --trust the
// variable's --insecure-no-trust says "unchecked"; stdout holds the lines
// only.
func TestFeedCommand(t *testing.T) {
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	sc := trusttest.Publish(t, srv.JS)
	list := trusttest.WriteList(t, t.TempDir(), sc.List)
	run := func(args ...string) (int, []map[string]any, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		code := cli.Main(context.Background(), append([]string{"--nats-url", srv.ClientURL()}, args...), &out, &errOut)
		var lines []map[string]any
		for l := range strings.SplitSeq(strings.TrimSuffix(out.String(), "\n"), "\n") {
			if l == "" {
				continue
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil || m["specversion"] != "1.0" {
				t.Fatalf("not a CloudEvents JSON line (%v): %s", err, l)
			}
			lines = append(lines, m)
		}
		return code, lines, errOut.String()
	}
	code, lines, errOut := run("--trust", list, "feed")
	if code != cli.ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	untrusted := 0
	for _, l := range lines {
		if l["auditflowtrust"] != "trusted" {
			untrusted++
		}
	}
	if untrusted != len(sc.Forgeries) {
		t.Errorf("%d untrusted lines, want %d (the forgeries)", untrusted, len(sc.Forgeries))
	}
	code, lines, errOut = run("feed", "--pipeline", trusttest.Pipeline, "--change", "signed-ok")
	if code != cli.ExitOK || len(lines) != 2 || lines[0]["auditflowtrust"] != "unchecked" {
		t.Fatalf("exit %d, %d lines (%v): %s", code, len(lines), lines, errOut)
	}
	// export --format ndjson is the same feed.
	code, exported, errOut := run("--trust", list, "export", "--format", "ndjson")
	if code != cli.ExitOK {
		t.Fatalf("export --format ndjson: exit %d: %s", code, errOut)
	}
	_, fed, _ := run("--trust", list, "feed")
	a, _ := json.Marshal(exported)
	b, _ := json.Marshal(fed)
	if len(exported) == 0 || !bytes.Equal(a, b) {
		t.Fatalf("export --format ndjson wrote %d lines, feed %d, not the same", len(exported), len(fed))
	}
	if code, _, errOut := run("--trust", list, "export", "--format", "ndjson", "--out", "x.tar.gz"); code != cli.ExitUsage {
		t.Fatalf("export --format ndjson --out: exit %d, want %d: %s", code, cli.ExitUsage, errOut)
	}
}

// TestFeedRepliesOnTheSIEMInbox: feed and export --format ndjson connect
// as the siem role (deploy/nats/accounts.conf), whose user may subscribe
// to _INBOX.siem.> only: with no user in the URL (a TLS certificate names
// it), their replies come there, not to the operator's inbox; a user in
// the URL names it.
func TestFeedRepliesOnTheSIEMInbox(t *testing.T) {
	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	trusttest.Publish(t, srv.JS)
	for _, c := range []struct {
		url  string
		args []string
		want string
	}{
		{srv.ClientURL(), []string{"feed"}, "prefix=_INBOX.siem "},
		{srv.ClientURL(), []string{"export", "--format", "ndjson"}, "prefix=_INBOX.siem "},
		{strings.Replace(srv.ClientURL(), "nats://", "nats://siem-b:pw@", 1), []string{"feed"}, "prefix=_INBOX.siem-b "},
	} {
		var out, errOut bytes.Buffer
		code := cli.Main(context.Background(), append([]string{"--nats-url", c.url, "--log-level", "debug"}, c.args...), &out, &errOut)
		if code != cli.ExitOK || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("%v with %s: exit %d, want replies on %q:\n%s", c.args, c.url, code, c.want, errOut.String())
		}
	}
}

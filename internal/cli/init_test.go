package cli_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/verify"
)

// initReport is init's --json output.
type initReport []struct {
	What, Name, Status, Detail string
	Differences                []struct{ Field, Expected, Actual string }
}

func runInit(t *testing.T, d *deployment, args ...string) (int, initReport, string) {
	t.Helper()
	code, out, errOut := d.run(t, "sqlite", append([]string{"--json", "init", "--mirror", "AUDIT_MIRROR"}, args...)...)
	var rep initReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("init --json: exit %d, %v\n%s\n%s", code, err, out, errOut)
	}
	return code, rep, errOut
}

// TestInitReportsEveryDifference: over what auditflow made itself (a
// projector's streams and consumer, init's stream, bucket and mirror),
// init finds nothing to say (exit 0, every object "exists"), the
// projector's consumer included. Then each managed stream, the lock
// bucket and the projector's consumer are changed the way an insider
// with edit rights would — bounded, rollups allowed, filtered to one
// pipeline — and init exits 3 naming each change (field, expected,
// actual), and changes none of them, --dry-run or not.
func TestInitReportsEveryDifference(t *testing.T) {
	d := deploy(t, "sqlite")
	ctx := context.Background()
	code, rep, errOut := runInit(t, d)
	if code != cli.ExitOK {
		t.Fatalf("first init: exit %d\n%+v\n%s", code, rep, errOut)
	}
	code, rep, errOut = runInit(t, d)
	if code != cli.ExitOK {
		t.Fatalf("init again: exit %d\n%+v\n%s", code, rep, errOut)
	}
	streams := len(projector.Streams(projector.Config{})) + 4 // the audit stream, the bucket, the mirror, verify results
	seen := map[string]bool{}
	for _, it := range rep {
		if it.Status != "exists" {
			t.Errorf("init again: %+v, want exists", it)
		}
		seen[it.Name] = true
	}
	if len(rep) != streams+1 || !seen["AUDIT > projector-sqlite"] {
		t.Fatalf("init again reports %d objects, want %d streams and the projector's consumer: %+v", len(rep), streams, rep)
	}

	update := func(name string, change func(*jetstream.StreamConfig)) {
		t.Helper()
		s, err := d.js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		change(&cfg)
		if _, err := d.js.UpdateStream(ctx, cfg); err != nil {
			t.Fatalf("update %s: %v", name, err)
		}
	}
	update(producer.DefaultStreamName, func(c *jetstream.StreamConfig) { c.MaxAge = time.Hour })
	update("AUDIT_MIRROR", func(c *jetstream.StreamConfig) { c.MaxBytes = 1 << 20 })
	update(projector.DeadLetterStream, func(c *jetstream.StreamConfig) { c.MaxMsgs = 1 })
	update(projector.WritesStream, func(c *jetstream.StreamConfig) { c.Discard = jetstream.DiscardNew })
	update(verify.ResultsStream, func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = 1 })
	// A bucket cannot be made to allow purges once it denies them: one
	// made by nats kv add (or an older auditflow) allows them.
	if err := d.js.DeleteKeyValue(ctx, lock.DefaultBucket); err != nil {
		t.Fatal(err)
	}
	if _, err := d.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: lock.DefaultBucket, TTL: lock.DefaultLease}); err != nil {
		t.Fatal(err)
	}
	cons, err := d.js.Consumer(ctx, producer.DefaultStreamName, "projector-sqlite")
	if err != nil {
		t.Fatal(err)
	}
	cc := cons.CachedInfo().Config
	cc.FilterSubject, cc.MaxDeliver = "audit.exec.billing.>", 1
	if _, err := d.js.UpdateConsumer(ctx, producer.DefaultStreamName, cc); err != nil {
		t.Fatal(err)
	}

	// A push consumer someone made on the audit stream: it hands every
	// event to whoever may subscribe to its deliver subject.
	if _, err := d.js.CreateOrUpdatePushConsumer(ctx, producer.DefaultStreamName, jetstream.ConsumerConfig{Durable: "leak", DeliverSubject: "audit.writes.leak"}); err != nil {
		t.Fatal(err)
	}

	want := map[string][][3]string{ // name → field, expected, actual
		"AUDIT > leak": {{"deliver subject", "none: only a mirror's consumer pushes, to auditflow.mirror.leak",
			"audit.writes.leak (every event it reads goes there; remove it: nats consumer rm AUDIT leak)"}},
		"AUDIT":                    {{"max age", "unlimited", "1h0m0s"}},
		"AUDIT_MIRROR":             {{"max bytes", "unlimited", "1048576"}},
		"AUDIT_DEADLETTER":         {{"max msgs", "unlimited", "1"}},
		"AUDIT_WRITES":             {{"discard", "DiscardOld", "DiscardNew"}},
		"AUDIT_VERIFY":             {{"max msgs per subject", "100", "1"}},
		lock.DefaultBucket:         {{"deny purge", "true", "false"}, {"allow rollup", "false", "true"}},
		"AUDIT > projector-sqlite": {{"filter subject", "audit.exec.>", "audit.exec.billing.>"}, {"max deliver", "unlimited", "1"}},
	}
	for _, args := range [][]string{{"--dry-run"}, nil} {
		code, rep, errOut := runInit(t, d, args...)
		if code != cli.ExitProblems || !strings.Contains(errOut, "break-glass") {
			t.Errorf("init %v over the changes: exit %d, want %d naming break-glass\n%s", args, code, cli.ExitProblems, errOut)
		}
		found := map[string][][3]string{}
		for _, it := range rep {
			if it.Status == "differs" {
				for _, df := range it.Differences {
					found[it.Name] = append(found[it.Name], [3]string{df.Field, df.Expected, df.Actual})
					if !strings.Contains(it.Detail, df.Field+": expected "+df.Expected) {
						t.Errorf("%s: detail %q does not name %+v", it.Name, it.Detail, df)
					}
				}
			}
		}
		for name, ds := range want {
			for _, w := range ds {
				if !containsDiff(found[name], w) {
					t.Errorf("init %v: %s: %v not reported (found %v)", args, name, w, found[name])
				}
			}
			if len(found[name]) != len(ds) {
				t.Errorf("init %v: %s: found %v, want %v", args, name, found[name], ds)
			}
		}
		if len(found) != len(want) {
			t.Errorf("init %v: differences on %d objects, want %d: %v", args, len(found), len(want), found)
		}
	}
	// Nothing was changed back.
	if s, err := d.js.Stream(ctx, projector.DeadLetterStream); err != nil || s.CachedInfo().Config.MaxMsgs != 1 {
		t.Fatalf("dead letters after init: %v", err)
	}
	if s, err := d.js.Stream(ctx, "KV_"+lock.DefaultBucket); err != nil || !s.CachedInfo().Config.AllowRollup {
		t.Fatalf("lock bucket after init: %v", err)
	}

	// A lease other than the bucket's is a difference only when given.
	code, rep, _ = runInit(t, d, "--lock-lease", "17s")
	if code != cli.ExitProblems || !containsItemDiff(rep, lock.DefaultBucket, "lease (max age)") {
		t.Fatalf("init --lock-lease 17s: exit %d, %+v", code, rep)
	}
}

func containsDiff(ds [][3]string, d [3]string) bool {
	for _, x := range ds {
		if x == d {
			return true
		}
	}
	return false
}

func containsItemDiff(rep initReport, name, field string) bool {
	for _, it := range rep {
		for _, d := range it.Differences {
			if it.Name == name && d.Field == field {
				return true
			}
		}
	}
	return false
}

// TestInitOverADeletedStreamNamesTheMirror: init refuses to create an
// empty audit stream over a deleted one, and names the command that
// restores it from the mirror it finds, without being told its name.
func TestInitOverADeletedStreamNamesTheMirror(t *testing.T) {
	d := deploy(t, "sqlite")
	if code, rep, errOut := runInit(t, d); code != cli.ExitOK {
		t.Fatalf("first init: exit %d\n%+v\n%s", code, rep, errOut)
	}
	if err := d.js.DeleteStream(context.Background(), producer.DefaultStreamName); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := d.run(t, "sqlite", "init")
	if code != cli.ExitRefused || !strings.Contains(errOut, "auditflow restore --from AUDIT_MIRROR") {
		t.Fatalf("init over a deleted stream: exit %d, want %d naming auditflow restore --from AUDIT_MIRROR\n%s\n%s", code, cli.ExitRefused, out, errOut)
	}
}

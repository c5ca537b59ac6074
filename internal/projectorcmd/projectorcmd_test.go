package projectorcmd_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/projectorcmd"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/stores/storetest"
)

// TestEveryStore runs the command into each backend's real server (the
// ones scripts/testservers.sh starts) and checks that it stores the events
// and stops cleanly on cancellation.
func TestEveryStore(t *testing.T) {
	ns := fmt.Sprintf("cmd%d", time.Now().UnixNano()%1e6)
	cases := []struct {
		kind string
		args func(t *testing.T) []string
	}{
		{"sqlite", func(t *testing.T) []string {
			return []string{"--sqlite-path", filepath.Join(t.TempDir(), "audit.db")}
		}},
		{"mongo", func(t *testing.T) []string {
			t.Setenv("AUDITFLOW_MONGO_URI", storetest.ServerAddr(t, "AUDITFLOW_TEST_MONGO_URI"))
			return []string{"--mongo-database", ns, "--mongo-batch", "40"}
		}},
		{"dynamodb", func(t *testing.T) []string {
			t.Setenv("AWS_ACCESS_KEY_ID", "test")
			t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
			return []string{"--dynamo-endpoint", storetest.ServerAddr(t, "AUDITFLOW_TEST_DYNAMO_ENDPOINT"),
				"--dynamo-region", "us-east-1", "--dynamo-table-prefix", ns + "_"}
		}},
		{"couchbase", func(t *testing.T) []string {
			t.Setenv("AUDITFLOW_COUCHBASE_PASSWORD", os.Getenv("AUDITFLOW_TEST_COUCHBASE_PASSWORD"))
			return []string{"--couchbase-connstr", storetest.ServerAddr(t, "AUDITFLOW_TEST_COUCHBASE_CONNSTR"),
				"--couchbase-user", os.Getenv("AUDITFLOW_TEST_COUCHBASE_USER"), "--couchbase-bucket", os.Getenv("AUDITFLOW_TEST_COUCHBASE_BUCKET"),
				"--couchbase-scope", "auditflow_test", "--couchbase-collection", ns}
		}},
	}
	for _, c := range cases {
		t.Run(c.kind, func(t *testing.T) {
			args := append([]string{"--store", c.kind}, c.args(t)...)
			projectInto(t, args)
		})
	}
}

func projectInto(t *testing.T, storeArgs []string) {
	srv, err := embedded.Start(embedded.Config{DataDir: t.TempDir(), Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	nc, err := srv.Connect("test")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	prod, err := producer.New(ctx, js, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	for i := range n {
		e := events.New(events.ExecutionStarted, "billing", fmt.Sprintf("change-%d", i))
		e.ExecutionID = "x"
		if _, err := prod.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	var stderr syncBuffer
	done := make(chan int)
	go func() {
		done <- projectorcmd.Main(rctx, append([]string{"--nats-url", srv.ClientURL(), "--log-format", "json"}, storeArgs...), &stderr)
	}()
	cons, err := js.Consumer(ctx, producer.DefaultStreamName, "projector-"+storeArgs[1])
	for err != nil {
		time.Sleep(20 * time.Millisecond)
		cons, err = js.Consumer(ctx, producer.DefaultStreamName, "projector-"+storeArgs[1])
		select {
		case code := <-done:
			t.Fatalf("exit %d before consuming\n%s", code, stderr.String())
		default:
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := cons.Info(ctx)
		if err == nil && info.AckFloor.Stream == n && info.NumAckPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events not all stored and acknowledged: %+v\n%s", info, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != projectorcmd.ExitOK {
		t.Fatalf("exit %d after cancellation\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), `"msg":"projector stopped"`) {
		t.Fatalf("no clean stop logged:\n%s", stderr.String())
	}
}

// syncBuffer is a bytes.Buffer safe for the command's goroutine and ours.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestUsageErrors(t *testing.T) {
	t.Setenv("AUDITFLOW_MONGO_URI", "")
	t.Setenv("AUDITFLOW_COUCHBASE_PASSWORD", "")
	for name, c := range map[string]struct {
		args []string
		flag string // the flag the one-line error must name
	}{
		"unknown store":       {[]string{"--store", "oracle"}, "--store"},
		"bad log format":      {[]string{"--log-format", "xml"}, "--log-format"},
		"bad table name":      {[]string{"--sqlite-path", filepath.Join(t.TempDir(), "x.db"), "--sqlite-issues-table", "drop table"}, "IssuesTable"},
		"stray argument":      {[]string{"now"}, "now"},
		"mongo without uri":   {[]string{"--store", "mongo"}, "--mongo-uri"},
		"mongo bad concern":   {[]string{"--store", "mongo", "--mongo-uri", "mongodb://x", "--mongo-write-concern", "lots"}, "--mongo-write-concern"},
		"dynamo billing":      {[]string{"--store", "dynamodb", "--dynamo-billing", "provisioned"}, "--dynamo-read-capacity"},
		"dynamo endpoint":     {[]string{"--store", "dynamodb", "--dynamo-endpoint", "localhost"}, "--dynamo-endpoint"},
		"couchbase no pass":   {[]string{"--store", "couchbase", "--couchbase-connstr", "couchbase://x", "--couchbase-bucket", "b", "--couchbase-user", "u"}, "--couchbase-password-file"},
		"couchbase no bucket": {[]string{"--store", "couchbase", "--couchbase-connstr", "couchbase://x"}, "--couchbase-bucket"},
	} {
		var stderr bytes.Buffer
		code := projectorcmd.Main(context.Background(), c.args, &stderr)
		if code != projectorcmd.ExitUsage || !strings.Contains(stderr.String(), c.flag) {
			t.Errorf("%s: exit %d, want %d with an error naming %s\n%s", name, code, projectorcmd.ExitUsage, c.flag, stderr.String())
		}
	}
}

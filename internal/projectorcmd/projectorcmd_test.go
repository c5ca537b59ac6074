package projectorcmd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/auditflow/auditflow/internal/promtest"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/projectorcmd"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
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
	if err := projector.EnsureStreams(ctx, js, projector.Config{}); err != nil { // as auditflow init does
		t.Fatal(err)
	}
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
		done <- projectorcmd.Main(rctx, append([]string{"--nats-url", srv.ClientURL(), "--log-format", "json",
			"--metrics-addr", "127.0.0.1:0"}, storeArgs...), io.Discard, &stderr)
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
	checkEndpoints(t, metricsAddr(t, &stderr), storeArgs[1], n)
	cancel()
	if code := <-done; code != projectorcmd.ExitOK {
		t.Fatalf("exit %d after cancellation\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), `"msg":"projector stopped"`) {
		t.Fatalf("no clean stop logged:\n%s", stderr.String())
	}
}

// metricsAddr returns the address the command logged it serves metrics on.
func metricsAddr(t *testing.T, stderr *syncBuffer) string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for line := range strings.Lines(stderr.String()) {
			var l struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "serving metrics and health checks" {
				return l.Addr
			}
		}
	}
	t.Fatalf("no metrics address logged\n%s", stderr.String())
	return ""
}

// checkEndpoints scrapes the command's /metrics, /healthz and /readyz once
// it has projected n events into the store kind.
func checkEndpoints(t *testing.T, addr, kind string, n int) {
	t.Helper()
	labels := fmt.Sprintf(`{consumer="projector-%s",store="%s"}`, kind, kind)
	var m map[string]float64
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		m = promtest.Scrape(t, "http://"+addr+"/metrics")
		if lag, ok := m["auditflow_projector_lag_messages"+labels]; ok && lag == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lag not 0 after catching up: %v", m["auditflow_projector_lag_messages"+labels])
		}
	}
	if got := m["auditflow_projector_events_applied_total"+labels]; got != float64(n) {
		t.Errorf("events applied = %v, want %d", got, n)
	}
	if got := m["auditflow_projector_last_applied_sequence"+labels]; got != float64(n) {
		t.Errorf("last applied sequence = %v, want %d", got, n)
	}
	if _, ok := m["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}
	buildInfo := false
	for name, v := range m {
		buildInfo = buildInfo || (strings.HasPrefix(name, "auditflow_build_info{") && v == 1)
	}
	if !buildInfo {
		t.Error("no auditflow_build_info")
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: %s %s", path, resp.Status, b)
		}
	}
}

// TestMetricsAddrDefaultIsLoopback: with no --metrics-addr the projector
// serves its metrics and probes on the loopback interface only.
func TestMetricsAddrDefaultIsLoopback(t *testing.T) {
	if projectorcmd.DefaultMetricsAddr != "127.0.0.1:9464" {
		t.Fatalf("DefaultMetricsAddr = %q, want 127.0.0.1:9464", projectorcmd.DefaultMetricsAddr)
	}
	var out bytes.Buffer
	projectorcmd.Main(context.Background(), []string{"-h"}, &out, io.Discard)
	if !strings.Contains(out.String(), `"127.0.0.1:9464"`) {
		t.Fatalf("-h does not show the loopback default:\n%s", out.String())
	}
}

// TestMetricsAddrInUse: a taken port stops the command before it opens
// anything, with an error naming the address and the ways out: another
// port, a free one (127.0.0.1:0), or none.
func TestMetricsAddrInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var stderr bytes.Buffer
	code := projectorcmd.Main(context.Background(), []string{"--metrics-addr", ln.Addr().String(),
		"--sqlite-path", filepath.Join(t.TempDir(), "audit.db"), "--nats-url", "nats://127.0.0.1:1"}, io.Discard, &stderr)
	for _, want := range []string{"--metrics-addr " + ln.Addr().String(), "already in use", "--metrics-addr 127.0.0.1:0", "empty --metrics-addr"} {
		if code != projectorcmd.ExitError || !strings.Contains(stderr.String(), want) {
			t.Fatalf("exit %d, want %d saying %q\n%s", code, projectorcmd.ExitError, want, stderr.String())
		}
	}
	if strings.Contains(stderr.String(), "opening audit store") {
		t.Fatalf("the store was opened before the port was checked\n%s", stderr.String())
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
		"metrics addr":        {[]string{"--metrics-addr", "9464"}, "--metrics-addr"},
		"mongo without uri":   {[]string{"--store", "mongo"}, "--mongo-uri"},
		"mongo bad concern":   {[]string{"--store", "mongo", "--mongo-uri", "mongodb://x", "--mongo-write-concern", "lots"}, "--mongo-write-concern"},
		"dynamo billing":      {[]string{"--store", "dynamodb", "--dynamo-billing", "provisioned"}, "--dynamo-read-capacity"},
		"dynamo endpoint":     {[]string{"--store", "dynamodb", "--dynamo-endpoint", "localhost"}, "--dynamo-endpoint"},
		"couchbase no pass":   {[]string{"--store", "couchbase", "--couchbase-connstr", "couchbase://x", "--couchbase-bucket", "b", "--couchbase-user", "u"}, "--couchbase-password-file"},
		"couchbase no bucket": {[]string{"--store", "couchbase", "--couchbase-connstr", "couchbase://x"}, "--couchbase-bucket"},
		"short ack wait":      {[]string{"--ack-wait", "500ms"}, "--ack-wait"},
		"write timeout":       {[]string{"--write-timeout", "4s"}, "--write-timeout"},
		"stall after":         {[]string{"--stall-after", "-1s"}, "--stall-after"},
		"shutdown timeout":    {[]string{"--shutdown-timeout", "0s"}, "--shutdown-timeout"},
	} {
		var stderr bytes.Buffer
		code := projectorcmd.Main(context.Background(), c.args, io.Discard, &stderr)
		if code != projectorcmd.ExitUsage || !strings.Contains(stderr.String(), c.flag) {
			t.Errorf("%s: exit %d, want %d with an error naming %s\n%s", name, code, projectorcmd.ExitUsage, c.flag, stderr.String())
		}
	}
}

// TestTimingFlags: the projector's timing comes from flags or their
// environment variables, and the write timeout must stay below the ack
// wait whichever way each is set.
func TestTimingFlags(t *testing.T) {
	db := filepath.Join(t.TempDir(), "audit.db")
	if err := projectorcmd.CheckArgs([]string{"--sqlite-path", db, "--ack-wait", "10s", "--write-timeout", "6s", "--stall-after", "5m", "--shutdown-timeout", "20s"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AUDITFLOW_ACK_WAIT", "10s")
	if err := projectorcmd.CheckArgs([]string{"--sqlite-path", db, "--write-timeout", "6s"}); err != nil {
		t.Fatalf("ack wait from the environment: %v", err)
	}
	t.Setenv("AUDITFLOW_WRITE_TIMEOUT", "12s")
	if err := projectorcmd.CheckArgs([]string{"--sqlite-path", db}); err == nil || !strings.Contains(err.Error(), "--write-timeout") {
		t.Fatalf("write timeout above the ack wait: %v", err)
	}
	t.Setenv("AUDITFLOW_STALL_AFTER", "soon")
	if err := projectorcmd.CheckArgs([]string{"--sqlite-path", db, "--write-timeout", "1s"}); err == nil || !strings.Contains(err.Error(), "AUDITFLOW_STALL_AFTER") {
		t.Fatalf("a malformed duration in the environment: %v", err)
	}
}

// TestHelpAndVersionOnStdout: -h and --version answer on stdout with exit 0;
// a bad flag answers on stderr with exit 2, pointing at -h.
func TestHelpAndVersionOnStdout(t *testing.T) {
	for _, c := range []struct {
		args     []string
		code     int
		out, err string
	}{
		{[]string{"-h"}, projectorcmd.ExitOK, "Examples:", ""},
		{[]string{"--version"}, projectorcmd.ExitOK, "projector version ", ""},
		{[]string{"--no-such-flag"}, projectorcmd.ExitUsage, "", "projector -h shows the flags"},
	} {
		var stdout, stderr bytes.Buffer
		code := projectorcmd.Main(context.Background(), c.args, &stdout, &stderr)
		if code != c.code || !strings.Contains(stdout.String(), c.out) || !strings.Contains(stderr.String(), c.err) ||
			(c.out == "" && stdout.Len() > 0) || (c.err == "" && stderr.Len() > 0) {
			t.Errorf("%v: exit %d\nstdout:\n%s\nstderr:\n%s", c.args, code, stdout.String(), stderr.String())
		}
	}
}

// TestUnreachableStoreAtStart: a store that never answers (a port that
// accepts connections and says nothing) does not hang the projector: the
// health server answers from the start — /healthz 200, /readyz 503 naming
// the step — and after --open-timeout the command exits 1 naming it.
func TestUnreachableStoreAtStart(t *testing.T) {
	blackHole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer blackHole.Close()
	go func() {
		for {
			c, err := blackHole.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String()
	probe.Close()
	var stderr syncBuffer
	done := make(chan int, 1)
	start := time.Now()
	go func() {
		done <- projectorcmd.Main(context.Background(), []string{"--store", "mongo",
			"--mongo-uri", "mongodb://" + blackHole.Addr().String() + "/audit?serverSelectionTimeoutMS=600000&connectTimeoutMS=600000",
			"--open-timeout", "3s", "--metrics-addr", addr, "--nats-url", "nats://127.0.0.1:1"}, io.Discard, &stderr)
	}()
	var code int
	var body string
	for time.Since(start) < 5*time.Second {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			code, body = resp.StatusCode, string(b)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "starting: opening the audit store") {
		t.Fatalf("readyz while the store does not answer: %d %q, want 503 naming the step", code, body)
	}
	t.Logf("readyz %s after start: %d %s", time.Since(start).Round(time.Millisecond), code, strings.TrimSpace(body))
	if resp, err := http.Get("http://" + addr + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz while starting: %v %v", resp, err)
	}
	select {
	case code := <-done:
		if code != projectorcmd.ExitError || !strings.Contains(stderr.String(), "--open-timeout") {
			t.Fatalf("exit %d, want %d naming --open-timeout\n%s", code, projectorcmd.ExitError, stderr.String())
		}
		t.Logf("exited %d after %s", code, time.Since(start).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatalf("still opening the store 20s after start with --open-timeout 3s\n%s", stderr.String())
	}
}

// TestTrustListRequired: the projector refuses to start without a trust
// list (exit 2, naming --trust and --insecure-no-trust); with
// --insecure-no-trust it runs, warns, and /metrics shows it.
func TestTrustListRequired(t *testing.T) {
	t.Setenv("AUDITFLOW_INSECURE_NO_TRUST", "")
	var stderr bytes.Buffer
	code := projectorcmd.Main(context.Background(), []string{"--sqlite-path", filepath.Join(t.TempDir(), "audit.db"),
		"--nats-url", "nats://127.0.0.1:1"}, io.Discard, &stderr)
	if code != projectorcmd.ExitUsage || !strings.Contains(stderr.String(), "--insecure-no-trust") || !strings.Contains(stderr.String(), "--trust") {
		t.Fatalf("exit %d, want %d naming --trust and --insecure-no-trust\n%s", code, projectorcmd.ExitUsage, stderr.String())
	}
	if err := projectorcmd.CheckArgs([]string{"--sqlite-path", "x.db"}); err == nil {
		t.Fatal("CheckArgs accepted a projector without a trust list")
	}

	srv := natstest.StartWith(t, embedded.Config{Port: -1})
	if err := projector.EnsureStreams(context.Background(), srv.JS, projector.Config{}); err != nil {
		t.Fatal(err)
	}
	probe, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := probe.Addr().String()
	probe.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- projectorcmd.Main(ctx, []string{"--sqlite-path", filepath.Join(t.TempDir(), "audit.db"), "--nats-url", srv.ClientURL(),
			"--insecure-no-trust", "--metrics-addr", addr}, io.Discard, &logs)
	}()
	defer func() { cancel(); <-done }()
	var m map[string]float64
	var last string
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = string(b)
			if resp.StatusCode == http.StatusOK {
				m = promtest.Scrape(t, "http://"+addr+"/metrics")
				break
			}
		}
	}
	if m == nil {
		t.Fatalf("never ready: %s\n%s", last, logs.String())
	}
	if m["auditflow_projector_trust_checks_disabled"] != 1 {
		t.Fatalf("auditflow_projector_trust_checks_disabled = %v, want 1 (metrics %d series)", m["auditflow_projector_trust_checks_disabled"], len(m))
	}
	if !strings.Contains(logs.String(), "running without a trust list") || !strings.Contains(logs.String(), "level=WARN") {
		t.Fatalf("no warning logged:\n%s", logs.String())
	}
}

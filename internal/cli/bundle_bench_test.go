package cli_test

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/trust"
)

const bundleBenchChild = "AUDITFLOW_BUNDLE_BENCH_CHILD" // read, export or verify

// BenchmarkBundle measures export and verify-bundle as separate
// processes: the parent fills a stream with signed, chained events (1M,
// or AUDITFLOW_BENCH_BUNDLE_EVENTS, over 10k changes; the server in the
// parent), then runs children — this test binary — one after the other:
// one only reads the stream (an ordered consumer draining it: the
// baseline), one runs auditflow export of the whole stream, one
// auditflow verify-bundle of that bundle (the child runs the auditflow
// binary, built first, and waits for it: the figures are the binary's). It reports each one's events/s,
// as a ratio to the read (goal ≥ 0.5), and its peak RSS (VmHWM; goal ≤
// 100 MB). Both check every event's Ed25519 signature: the rate of those
// checks alone on every CPU, measured in the same run, is reported as
// the ceiling. Run with:
//
//	go test ./internal/cli -run '^$' -bench Bundle -benchtime 1x -timeout 30m
//
// AUDITFLOW_BENCH_BUNDLE_DIR=DIR keeps the bundle, trust list and key there.
func BenchmarkBundle(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("AUDITFLOW_BENCH_BUNDLE_EVENTS")); err == nil && v > 0 {
		n = v
	}
	srv := natstest.StartWith(b, embedded.Config{Port: -1, Logger: slog.New(slog.DiscardHandler)})
	runner, operator := trusttest.NewSigner(b), trusttest.NewSigner(b)
	list, err := trust.NewList(
		trust.Key{Key: runner.PublicKey(), Name: "runner-1", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{trust.AllPipelines}},
		trust.Key{Key: operator.PublicKey(), Name: "exporter", Roles: []trust.Role{trust.RoleOperator}, Pipelines: []string{trust.AllPipelines}})
	if err != nil {
		b.Fatal(err)
	}
	dir := os.Getenv("AUDITFLOW_BENCH_BUNDLE_DIR") // to keep the bundle
	if dir == "" {
		dir = b.TempDir()
	}
	env := []string{"AUDITFLOW_BENCH_NATS=" + srv.ClientURL(), "AUDITFLOW_BENCH_TRUST=" + trusttest.WriteList(b, dir, list),
		"AUDITFLOW_BENCH_KEY=" + trusttest.WriteKey(b, dir, operator), "AUDITFLOW_BENCH_BUNDLE=" + filepath.Join(dir, "bench.tar.gz")}
	bin := filepath.Join(dir, "auditflow")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/auditflow").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	env = append(env, "AUDITFLOW_BENCH_BIN="+bin)
	start := time.Now()
	trusttest.PublishChained(b, srv.JS, runner, "billing", 10_000, n)
	b.Logf("published %d events in %s", n, time.Since(start).Round(time.Millisecond))
	ceiling := signatureCeiling(b, runner, list)
	var read, export, verify bundleBenchResult
	for b.Loop() {
		read = runBundleBenchChild(b, "read", env, n)
		export = runBundleBenchChild(b, "export", env, n)
		verify = runBundleBenchChild(b, "verify", env, n)
	}
	st, _ := os.Stat(filepath.Join(dir, "bench.tar.gz"))
	for _, r := range []struct {
		name string
		bundleBenchResult
	}{{"read", read}, {"export", export}, {"verify", verify}} {
		b.ReportMetric(float64(n)/r.Seconds, r.name+"-events/s")
		b.ReportMetric(float64(r.PeakRSSKB)/1024, r.name+"-MB-peak-RSS")
		if r.name != "read" {
			b.ReportMetric(read.Seconds/r.Seconds, r.name+"-vs-read")
		}
	}
	b.ReportMetric(ceiling, "signature-checks/s")
	b.ReportMetric(ceiling*read.Seconds/float64(n), "signature-checks-vs-read")
	if st != nil {
		b.ReportMetric(float64(st.Size())/float64(n), "bundle-bytes/event")
	}
	proctest.ReportLoad(b)
}

// signatureCeiling is how many events/s trust.List.CheckHeader judges on
// every CPU at once: export and verify-bundle do it for each event.
func signatureCeiling(b *testing.B, signer *trust.Signer, list *trust.List) float64 {
	const n = 20_000
	type signed struct{ header, hash string }
	in := make([]signed, n)
	for i := range in {
		h := events.Hash([]byte(strconv.Itoa(i)))
		in[i] = signed{signer.SignHash(h), h}
	}
	start := time.Now()
	var wg sync.WaitGroup
	procs := runtime.GOMAXPROCS(0)
	for k := range procs {
		wg.Go(func() {
			for _, s := range in[k*n/procs : (k+1)*n/procs] {
				if _, _, v := list.CheckHeader(s.header, trust.Signed{Pipeline: "billing", Type: events.ExecutionSucceeded, Hash: s.hash}); !v.Trusted() {
					b.Error(v.Problem)
				}
			}
		})
	}
	wg.Wait()
	return n / time.Since(start).Seconds()
}

type bundleBenchResult struct {
	Seconds   float64
	PeakRSSKB int64
}

func runBundleBenchChild(b *testing.B, mode string, env []string, n int) bundleBenchResult {
	b.Helper()
	var r bundleBenchResult
	proctest.RunChild(b, "TestBundleBenchChild", append(env, bundleBenchChild+"="+mode, "AUDITFLOW_BENCH_EVENTS="+strconv.Itoa(n)), &r)
	return r
}

// TestBundleBenchChild is a child process of BenchmarkBundle; it does
// nothing in a normal test run.
func TestBundleBenchChild(t *testing.T) {
	mode := os.Getenv(bundleBenchChild)
	if mode == "" {
		t.Skip("child process of BenchmarkBundle")
	}
	n, _ := strconv.Atoi(os.Getenv("AUDITFLOW_BENCH_EVENTS"))
	url, path := os.Getenv("AUDITFLOW_BENCH_NATS"), os.Getenv("AUDITFLOW_BENCH_BUNDLE")
	start := time.Now()
	switch mode {
	case "read":
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		if got, _ := natstest.Drain(t, js, "AUDIT"); got != n {
			t.Fatalf("read %d of %d", got, n)
		}
	case "export", "verify":
		args := []string{"export", "--nats-url", url, "--trust", os.Getenv("AUDITFLOW_BENCH_TRUST"),
			"--signing-key", os.Getenv("AUDITFLOW_BENCH_KEY"), "--out", path}
		want := fmt.Sprintf("%d of 10000 changes", n)
		if mode == "verify" {
			args, want = []string{"verify-bundle", path, "--trust", os.Getenv("AUDITFLOW_BENCH_TRUST")}, fmt.Sprintf("%d events of 10000 changes", n)
		}
		cmd := exec.Command(os.Getenv("AUDITFLOW_BENCH_BIN"), args...)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("auditflow %s: %v\n%s", mode, err, out)
		}
		proctest.PrintResult(t, bundleBenchResult{Seconds: time.Since(start).Seconds(), PeakRSSKB: cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss})
		return
	}
	proctest.PrintResult(t, bundleBenchResult{Seconds: time.Since(start).Seconds(), PeakRSSKB: proctest.PeakRSSKB()})
}

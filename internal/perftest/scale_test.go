//go:build perf && linux

package perftest

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
)

var (
	nEvents      = flag.Int("perf.events", 60000, "events per SQLite run")
	nMongoEvents = flag.Int("perf.mongo-events", 3000, "events per MongoDB (FerretDB) run: FerretDB slows down as a collection grows")
	drainWithin  = flag.Duration("perf.drain-within", 5*time.Minute, "how long a run may take to acknowledge every event")
)

// serverEnv makes this test binary a nats-server process (see runServer).
const serverEnv = "AUDITFLOW_PERF_NATS_SERVER"

var projectorBin string

func TestMain(m *testing.M) {
	if cfg := os.Getenv(serverEnv); cfg != "" {
		if err := runServer(cfg); err != nil {
			fmt.Fprintln(os.Stderr, "nats-server:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	flag.Parse()
	dir, err := os.MkdirTemp("", "auditflow-perftest")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	projectorBin = filepath.Join(dir, "projector")
	cmd := exec.Command("go", "build", "-o", projectorBin, "../../cmd/projector")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build projector:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// serverConfig is what a server process is told through serverEnv.
type serverConfig struct {
	Name        string
	Port        int
	ClusterPort int // 0: no cluster
	Routes      []string
	StoreDir    string
	SyncAlways  bool
}

// runServer runs a nats-server from the nats-server/v2 module in this
// process until SIGTERM: the same server the project embeds, as a
// process of its own, so that its CPU time is its own.
func runServer(cfgJSON string) error {
	var c serverConfig
	if err := json.Unmarshal([]byte(cfgJSON), &c); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	opts := &server.Options{ServerName: c.Name, Host: "127.0.0.1", Port: c.Port, JetStream: true,
		StoreDir: c.StoreDir, SyncAlways: c.SyncAlways, NoSigs: true}
	if c.ClusterPort != 0 {
		opts.Cluster = server.ClusterOpts{Name: "perf", Host: "127.0.0.1", Port: c.ClusterPort}
		opts.Routes = server.RoutesFromStr(strings.Join(c.Routes, ","))
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("new server: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go s.Start() // the server owns this goroutine; Shutdown ends it
	<-ctx.Done()
	s.Shutdown()
	s.WaitForShutdown()
	return nil
}

// proc is a child process whose CPU time the benchmark reads.
type proc struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan struct{}
}

func startProc(b *testing.B, env []string, path string, args ...string) *proc {
	b.Helper()
	p := &proc{cmd: exec.Command(path, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	b.Cleanup(p.stop)
	return p
}

// stop ends the process with SIGTERM (SIGKILL after 10s) and waits for it.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// cpu is the process's user+system CPU time so far, from /proc/<pid>/stat.
func (p *proc) cpu(b *testing.B) time.Duration {
	b.Helper()
	return cpuOf(b, p.cmd.Process.Pid)
}

func cpuOf(b *testing.B, pid int) time.Duration {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) start at ") ".
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, raw)
	}
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// freePorts picks n distinct free TCP ports on 127.0.0.1.
func freePorts(b *testing.B, n int) []int {
	b.Helper()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close() // held until all are picked, so that they differ
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// perfEvents returns n events over 1000 changes, as the projector's
// benchmarks publish them. tag keeps the ids of separate runs apart.
func perfEvents(n int, tag string) []events.Event {
	out := make([]events.Event, n)
	for i := range out {
		typ := events.ExecutionStarted
		if i%2 == 1 {
			typ = events.ExecutionSucceeded
		}
		e := events.New(typ, "billing-"+tag, fmt.Sprintf("%05d-migration", (i/2)%1000))
		e.ExecutionID, e.Author, e.Order = fmt.Sprint("exec-", i/2), "alice@example.com", fmt.Sprintf("%05d", (i/2)%1000)
		e.TargetSystem, e.Host, e.RunnerID, e.LockToken = "billing-db", "deploy-7f9c", "runner-3", 118
		e.Duration = 1780 * time.Millisecond
		e.Metadata = map[string]string{"ticket": "OPS-1234"}
		out[i] = e
	}
	return out
}

func publishAll(b *testing.B, prod *producer.Producer, evs []events.Event) {
	b.Helper()
	batch := prod.NewBatch()
	for i, e := range evs {
		if err := batch.Add(context.Background(), e); err != nil {
			b.Fatal(err)
		}
		if i%2000 == 1999 || i == len(evs)-1 {
			if _, err := batch.Wait(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func connect(b *testing.B, url string) jetstream.JetStream {
	b.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	return js
}

// mark is when a share of the events was first acknowledged (neither
// pending nor in flight on the consumer), and the CPU times sampled then.
type mark struct {
	at  time.Time
	cpu []time.Duration
}

// steady is the share of events between the two marks waitDrained takes
// (10% and 90%): the rate between them leaves out process start-up and
// the tail.
const steady = 0.8

// waitDrained waits until the consumer exists and has nothing pending or
// unacknowledged, with at least want events acknowledged in all. It
// returns the marks at 10% and 90% of want, sampling CPU times with cpu.
func waitDrained(b *testing.B, js jetstream.JetStream, consumer string, want uint64, within time.Duration, cpu func() []time.Duration, procs ...*proc) [2]mark {
	b.Helper()
	var marks [2]mark
	next := 0
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := js.Consumer(ctx, producer.DefaultStreamName, consumer)
		if err == nil {
			var info *jetstream.ConsumerInfo
			if info, err = c.Info(ctx); err == nil {
				// Settled: neither pending nor in flight. The ack floor
				// would jump past the marks when one batch lags.
				settled := float64(want) - float64(info.NumPending) - float64(info.NumAckPending)
				for next < 2 && settled >= []float64{0.1, 0.9}[next]*float64(want) {
					marks[next] = mark{at: time.Now(), cpu: cpu()}
					next++
				}
				if info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream >= want {
					cancel()
					return marks
				}
			}
		}
		cancel()
		if time.Now().After(deadline) {
			var tails []string
			for _, p := range procs {
				p.stop() // so that its output is complete
				out := p.out.String()
				tails = append(tails, out[max(0, len(out)-3000):])
			}
			b.Fatalf("consumer %s not drained within %s (last error %v); the projectors' last output:\n%s",
				consumer, within, err, strings.Join(tails, "\n---\n"))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// storeArgs returns the projector flags of one store for run tag.
type storeKind struct {
	name   string
	events int
	args   func(b *testing.B, tag string) []string
}

func stores(b *testing.B) []storeKind {
	dir := b.TempDir()
	out := []storeKind{{name: "sqlite", events: *nEvents, args: func(_ *testing.B, tag string) []string {
		return []string{"--store", "sqlite", "--sqlite-path", filepath.Join(dir, tag+".db")}
	}}}
	if uri := os.Getenv("AUDITFLOW_TEST_MONGO_URI"); uri != "" {
		out = append(out, storeKind{name: "mongo-ferretdb", events: *nMongoEvents, args: func(_ *testing.B, tag string) []string {
			return []string{"--store", "mongo", "--mongo-uri", uri, "--mongo-database",
				fmt.Sprintf("perf_%d_%s", time.Now().UnixNano(), tag), "--mongo-batch", "40", "--batch", "100"}
		}})
	}
	return out
}

// BenchmarkScaleOutProjectors drains one backlog from one durable consumer
// with 1 projector process, then the same backlog (the same stream, a new
// consumer, a new store) with 3 projector processes sharing one store: the
// real cmd/projector binary, 2 workers each. It reports events/s and CPU
// seconds per projector process between 10% and 90% of the backlog
// acknowledged (start-up and tail left out), and their ratios
// (3 ÷ 1). The server (in this process, R1, NATS's default sync) holds the
// backlog before the clock starts; its CPU is this process's.
func BenchmarkScaleOutProjectors(b *testing.B) {
	for _, sk := range stores(b) {
		b.Run("store="+sk.name, func(b *testing.B) {
			srv, err := embedded.Start(embedded.Config{DataDir: b.TempDir(), Port: -1, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(srv.Close)
			js := connect(b, srv.ClientURL())
			ctx := context.Background()
			if err := projector.EnsureStreams(ctx, js, projector.Config{}); err != nil {
				b.Fatal(err)
			}
			prod, err := producer.New(ctx, js, producer.Config{})
			if err != nil {
				b.Fatal(err)
			}
			publishAll(b, prod, perfEvents(sk.events, "p"))
			var rate, cpuPer, serverCPU [2]float64
			runs := 0
			for b.Loop() {
				for i, n := range []int{1, 3} {
					tag := fmt.Sprintf("n%d-%d", n, runs)
					r, c, s := drain(b, srv.ClientURL(), js, sk, tag, n)
					rate[i] += r
					cpuPer[i] += c
					serverCPU[i] += s
				}
				runs++
			}
			k := float64(runs)
			b.ReportMetric(rate[0]/k, "events/s-1proc")
			b.ReportMetric(rate[1]/k, "events/s-3proc")
			b.ReportMetric(rate[1]/rate[0], "rate-3÷1")
			b.ReportMetric(cpuPer[0]/k, "cpu-s/proc-1proc")
			b.ReportMetric(cpuPer[1]/k, "cpu-s/proc-3proc")
			b.ReportMetric(cpuPer[1]/cpuPer[0], "cpu/proc-3÷1")
			b.ReportMetric(3*cpuPer[1]/cpuPer[0], "cpu-total-3÷1")
			b.ReportMetric(serverCPU[1]/serverCPU[0], "server-cpu-3÷1")
			b.Logf("store %s, %d events, %d runs: 1 process %.0f events/s, %.2f CPU s; 3 processes %.0f events/s, %.2f CPU s each; server CPU %.2f s vs %.2f s; load %s",
				sk.name, sk.events, runs, rate[0]/k, cpuPer[0]/k, rate[1]/k, cpuPer[1]/k, serverCPU[0]/k, serverCPU[1]/k, loadavg())
		})
	}
}

// drain runs n projector processes on a new consumer until it has
// acknowledged the whole stream, and returns, between the 10% and 90%
// marks, events/s, CPU seconds per projector process and this process's
// CPU seconds (the server's, mostly).
func drain(b *testing.B, url string, js jetstream.JetStream, sk storeKind, tag string, n int) (rate, cpuPer, self float64) {
	b.Helper()
	consumer := "perf-" + tag
	args := append(sk.args(b, tag), "--consumer", consumer, "--metrics-addr", "")
	procs := make([]*proc, n)
	for i := range procs {
		procs[i] = startProc(b, []string{"AUDITFLOW_NATS_URL=" + url, "AUDITFLOW_LOG_LEVEL=warn"}, projectorBin, args...)
	}
	sample := func() []time.Duration {
		out := []time.Duration{cpuOf(b, os.Getpid())}
		for _, p := range procs {
			out = append(out, p.cpu(b))
		}
		return out
	}
	m := waitDrained(b, js, consumer, uint64(sk.events), *drainWithin, sample, procs...)
	var cpu time.Duration
	for i := 1; i <= n; i++ {
		cpu += m[1].cpu[i] - m[0].cpu[i]
	}
	warnings, first := 0, ""
	for _, p := range procs {
		p.stop()
		if p.cmd.ProcessState != nil && !p.cmd.ProcessState.Success() {
			b.Fatalf("projector: %v\n%s", p.cmd.ProcessState, p.out.String())
		}
		for line := range strings.Lines(p.out.String()) {
			if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
				if warnings++; first == "" {
					first = line
				}
			}
		}
	}
	if warnings > 0 { // retried store writes, redeliveries: they explain a slow run
		b.Logf("%s, %d processes: %d warnings and errors logged; the first: %s", sk.name, n, warnings, first)
	}
	return steady * float64(sk.events) / m[1].at.Sub(m[0].at).Seconds(), cpu.Seconds() / float64(n), (m[1].cpu[0] - m[0].cpu[0]).Seconds()
}

// cluster is one or three nats-server processes.
type cluster struct {
	procs []*proc
	url   string
}

func startCluster(b *testing.B, n int, sync bool) *cluster {
	b.Helper()
	ports := freePorts(b, 2*n)
	var routes, urls []string
	if n > 1 {
		for i := range n {
			routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[n+i]))
		}
	}
	c := &cluster{}
	for i := range n {
		cfg := serverConfig{Name: fmt.Sprintf("s%d", i), Port: ports[i], StoreDir: b.TempDir(), SyncAlways: sync, Routes: routes}
		if n > 1 {
			cfg.ClusterPort = ports[n+i]
		}
		raw, _ := json.Marshal(cfg)
		c.procs = append(c.procs, startProc(b, []string{serverEnv + "=" + string(raw)}, os.Args[0]))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
	}
	c.url = strings.Join(urls, ",")
	return c
}

// ready waits until JetStream answers (for a cluster: a meta leader is
// elected) and returns a client.
func (c *cluster) ready(b *testing.B) jetstream.JetStream {
	b.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		nc, err := nats.Connect(c.url)
		if err == nil {
			js, _ := jetstream.New(nc)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, err = js.AccountInfo(ctx)
			cancel()
			if err == nil {
				nc.Close()
				return connect(b, c.url)
			}
			nc.Close()
		}
		if time.Now().After(deadline) {
			var outs []string
			for _, p := range c.procs {
				outs = append(outs, p.out.String())
			}
			b.Fatalf("servers not ready: %v\n%s", err, strings.Join(outs, "\n---\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// BenchmarkScaleOutCluster publishes one batch of events (async, batches
// of 2000) to an R1 stream on one nats-server process and to an R3 stream
// on three nats-server processes (this test binary running the server),
// while one projector process (cmd/projector, SQLite) consumes them. It
// reports the publish rate, the end-to-end rate (until the projector has
// acknowledged the last event), CPU seconds per server process and in all
// over that window, and the ratios R3 ÷ R1.
func BenchmarkScaleOutCluster(b *testing.B) {
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) {
			var pub, e2e, cpuPer, cpuAll, projCPU [2]float64
			runs := 0
			for b.Loop() {
				for i, n := range []int{1, 3} {
					r := clusterRun(b, n, sync, fmt.Sprintf("r%d-%d", n, runs))
					pub[i] += r.pub
					e2e[i] += r.e2e
					cpuPer[i] += r.cpuPer
					cpuAll[i] += r.cpuPer * float64(n)
					projCPU[i] += r.projCPU
				}
				runs++
			}
			k := float64(runs)
			b.ReportMetric(pub[0]/k, "publish/s-R1")
			b.ReportMetric(pub[1]/k, "publish/s-R3")
			b.ReportMetric(pub[1]/pub[0], "publish-R3÷R1")
			b.ReportMetric(e2e[0]/k, "e2e/s-R1")
			b.ReportMetric(e2e[1]/k, "e2e/s-R3")
			b.ReportMetric(e2e[1]/e2e[0], "e2e-R3÷R1")
			b.ReportMetric(cpuPer[1]/cpuPer[0], "cpu/server-R3÷R1")
			b.ReportMetric(cpuAll[1]/cpuAll[0], "cpu-servers-R3÷R1")
			b.ReportMetric(projCPU[1]/projCPU[0], "cpu-projector-R3÷R1")
			b.Logf("sync=%v, %d events, %d runs: R1 publish %.0f/s, e2e %.0f/s, server CPU %.2f s, projector CPU %.2f s; R3 publish %.0f/s, e2e %.0f/s, CPU %.2f s per server, projector CPU %.2f s; load %s",
				sync, *nEvents, runs, pub[0]/k, e2e[0]/k, cpuPer[0]/k, projCPU[0]/k, pub[1]/k, e2e[1]/k, cpuPer[1]/k, projCPU[1]/k, loadavg())
		})
	}
}

type clusterResult struct{ pub, e2e, cpuPer, projCPU float64 }

func clusterRun(b *testing.B, n int, sync bool, tag string) clusterResult {
	b.Helper()
	c := startCluster(b, n, sync)
	js := c.ready(b)
	ctx := context.Background()
	sc := producer.StreamConfig{Replicas: n}
	if err := projector.EnsureStreams(ctx, js, projector.Config{Stream: sc}); err != nil {
		b.Fatal(err)
	}
	prod, err := producer.New(ctx, js, producer.Config{Stream: sc})
	if err != nil {
		b.Fatal(err)
	}
	evs := perfEvents(*nEvents, tag)
	db := filepath.Join(b.TempDir(), "audit.db")
	proj := startProc(b, []string{"AUDITFLOW_NATS_URL=" + c.url, "AUDITFLOW_LOG_LEVEL=warn"}, projectorBin,
		"--store", "sqlite", "--sqlite-path", db, "--stream-replicas", strconv.Itoa(n), "--metrics-addr", "")
	// The projector has made its consumer before the clock starts.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := js.Consumer(ctx, producer.DefaultStreamName, "projector-sqlite"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("projector made no consumer:\n%s", proj.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cpu0 := make([]time.Duration, n)
	for i, p := range c.procs {
		cpu0[i] = p.cpu(b)
	}
	proj0 := proj.cpu(b)
	t0 := time.Now()
	publishAll(b, prod, evs)
	pubTime := time.Since(t0)
	waitDrained(b, js, "projector-sqlite", uint64(len(evs)), *drainWithin, func() []time.Duration { return nil }, proj)
	e2eTime := time.Since(t0)
	var cpu time.Duration
	for i, p := range c.procs {
		cpu += p.cpu(b) - cpu0[i]
	}
	r := clusterResult{pub: float64(len(evs)) / pubTime.Seconds(), e2e: float64(len(evs)) / e2eTime.Seconds(),
		cpuPer: cpu.Seconds() / float64(n), projCPU: (proj.cpu(b) - proj0).Seconds()}
	proj.stop()
	for _, p := range c.procs {
		p.stop()
	}
	return r
}

func loadavg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(raw))
	return strings.Join(f[:3], " ")
}

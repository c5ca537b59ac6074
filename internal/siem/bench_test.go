package siem_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/embedded"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/internal/siem"
	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/trust"
)

const (
	childEnv = "AUDITFLOW_SIEM_BENCH_CHILD" // "read" or "feed"
	// eventsEnv sets BenchmarkFeed's stream size (default 200000).
	eventsEnv = "AUDITFLOW_BENCH_FEED_EVENTS"
)

// BenchmarkFeed measures a feed process alone: the parent fills a stream
// with signed, chained events (200k, or AUDITFLOW_BENCH_FEED_EVENTS, over
// 10k changes; server in the parent), then runs two child processes —
// this test binary — one after the other: one only reads the stream (an
// ordered consumer draining it), the other feeds it (Feed.Run with the
// trust list, lines written to io.Discard), then again without the list
// (unchecked: the feed's cost besides Ed25519 verification). It reports the feed's rate,
// its rate as a ratio to the read alone (goal ≥ 0.5), and each child's
// peak RSS (VmHWM; goal ≤ 100 MB for the feed). Run with:
//
//	go test ./internal/siem -run '^$' -bench Feed -benchtime 1x
func BenchmarkFeed(b *testing.B) {
	n := 200_000
	if v, err := strconv.Atoi(os.Getenv(eventsEnv)); err == nil && v > 0 {
		n = v
	}
	srv := natstest.StartWith(b, embedded.Config{Port: -1, Logger: slog.New(slog.DiscardHandler)})
	signer := trusttest.NewSigner(b)
	list, err := trust.NewList(trust.Key{Key: signer.PublicKey(), Name: "runner-1", Roles: []trust.Role{trust.RoleRunner},
		Pipelines: []string{trust.AllPipelines}})
	if err != nil {
		b.Fatal(err)
	}
	listPath := trusttest.WriteList(b, b.TempDir(), list)
	start := time.Now()
	trusttest.PublishChained(b, srv.JS, signer, "billing", 10_000, n)
	b.Logf("published %d events in %s", n, time.Since(start).Round(time.Millisecond))
	var read, feed, unchecked benchResult
	for b.Loop() {
		read = runBenchChild(b, "read", srv.ClientURL(), listPath, n)
		feed = runBenchChild(b, "feed", srv.ClientURL(), listPath, n)
		unchecked = runBenchChild(b, "unchecked", srv.ClientURL(), listPath, n)
	}
	// Without a trust list: what the feed costs besides verifying each
	// signature (Ed25519), which bounds the rate with a list.
	b.ReportMetric(float64(n)/unchecked.Seconds, "unchecked-events/s")
	b.ReportMetric(read.Seconds/unchecked.Seconds, "unchecked-vs-read")
	b.ReportMetric(float64(unchecked.PeakRSSKB)/1024, "unchecked-MB-peak-RSS")
	b.ReportMetric(float64(n)/feed.Seconds, "events/s")
	b.ReportMetric(float64(n)/read.Seconds, "read-events/s")
	b.ReportMetric(read.Seconds/feed.Seconds, "vs-read")
	b.ReportMetric(float64(feed.PeakRSSKB)/1024, "MB-peak-RSS")
	b.ReportMetric(float64(read.PeakRSSKB)/1024, "read-MB-peak-RSS")
	b.ReportMetric(float64(feed.Bytes)/float64(n), "bytes/line")
	proctest.ReportLoad(b)
}

type benchResult struct {
	Lines     int
	Bytes     int64
	Seconds   float64
	PeakRSSKB int64
}

func runBenchChild(b *testing.B, mode, url, listPath string, n int) benchResult {
	b.Helper()
	var r benchResult
	out := proctest.RunChild(b, "TestBenchChild", []string{childEnv + "=" + mode, "AUDITFLOW_BENCH_NATS=" + url, "AUDITFLOW_BENCH_TRUST=" + listPath}, &r)
	if r.Lines != n {
		b.Fatalf("child %s read %d of %d\n%s", mode, r.Lines, n, out)
	}
	return r
}

// countingDiscard counts what is written and keeps none of it.
type countingDiscard struct{ n int64 }

func (w *countingDiscard) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// TestBenchChild is a child process of BenchmarkFeed; it does nothing in a
// normal test run.
func TestBenchChild(t *testing.T) {
	mode := os.Getenv(childEnv)
	if mode == "" {
		t.Skip("child process of BenchmarkFeed")
	}
	nc, err := nats.Connect(os.Getenv("AUDITFLOW_BENCH_NATS"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	start := time.Now()
	var r benchResult
	switch mode {
	case "read":
		r.Lines, r.Bytes = natstest.Drain(t, js, "AUDIT")
	case "feed", "unchecked":
		var list *trust.List
		if mode == "feed" {
			if list, err = trust.LoadList(os.Getenv("AUDITFLOW_BENCH_TRUST")); err != nil {
				t.Fatal(err)
			}
		}
		f, err := siem.New(js, siem.Config{Trust: list})
		if err != nil {
			t.Fatal(err)
		}
		var w countingDiscard
		if err := f.Run(ctx, io.Writer(&w)); err != nil {
			t.Fatal(err)
		}
		st := f.Stats()
		if st.Untrusted+st.OutOfChain+st.Undecodable != 0 {
			t.Fatalf("the benchmark's events are all trusted and chained: %+v", st)
		}
		r.Lines, r.Bytes = st.Lines, w.n
	}
	r.Seconds, r.PeakRSSKB = time.Since(start).Seconds(), proctest.PeakRSSKB()
	proctest.PrintResult(t, r)
}

package siem_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/proctest"
	"github.com/auditflow/auditflow/internal/siem"
	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/trust"
)

// TestFeedVerdicts: over the forgery scenario plus a message that does not
// decode and a copy of an earlier event published again, every message
// has its line, a CloudEvents document; each forgery's line carries the
// trust list's problem, the signed history's "trusted" and its signer,
// the copy a chain problem, the junk its bytes and the reason. Without a
// list every event is "unchecked"; the filters keep one change.
func TestFeedVerdicts(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	sc := trusttest.Publish(t, srv.JS)
	subject := events.Subject(events.DefaultSubjectPrefix, trusttest.Pipeline, "signed-ok")
	junk := []byte(`{"not":"an event"}`)
	junkAck, err := srv.JS.Publish(ctx, events.Subject(events.DefaultSubjectPrefix, trusttest.Pipeline, "junk"), junk)
	if err != nil {
		t.Fatal(err)
	}
	first, err := srv.JS.Stream(ctx, "AUDIT")
	if err != nil {
		t.Fatal(err)
	}
	m1, err := first.GetMsg(ctx, 1)
	if err != nil || m1.Subject != subject {
		t.Fatalf("seq 1: %v %v", m1, err)
	}
	copied, err := srv.JS.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: m1.Data,
		Header: nats.Header{trust.Header: []string{m1.Header.Get(trust.Header)}}})
	if err != nil {
		t.Fatal(err)
	}

	feed := func(cfg siem.Config) []line {
		t.Helper()
		cfg.Logger = natstest.Logger(t)
		f, err := siem.New(srv.JS, cfg)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := f.Run(ctx, &out); err != nil {
			t.Fatal(err)
		}
		return parseLines(t, out.Bytes())
	}
	ls := feed(siem.Config{Trust: sc.List})
	if len(ls) != int(copied.Sequence) {
		t.Fatalf("%d lines, want one per message (%d)", len(ls), copied.Sequence)
	}
	bySeq := map[uint64]line{}
	for i, l := range ls {
		if *l.Seq != uint64(i+1) {
			t.Fatalf("line %d has seq %d: out of order", i+1, *l.Seq)
		}
		bySeq[*l.Seq] = l
	}
	forged := map[uint64]trusttest.Forgery{}
	for _, f := range sc.Forgeries {
		forged[f.Seq] = f
		l := bySeq[f.Seq]
		if *l.Trust == "trusted" || *l.Trust == "unchecked" || !strings.Contains(*l.Trust, string(f.Kind)) {
			t.Errorf("forgery %s (seq %d, %s): trust %q", f.ChangeID, f.Seq, f.Kind, *l.Trust)
		}
		if f.Kind == trust.KindUnsigned && *l.Signer != "" {
			t.Errorf("unsigned forgery with signer %q", *l.Signer)
		}
	}
	for seq, l := range bySeq {
		switch {
		case seq == junkAck.Sequence:
			raw, err := base64.StdEncoding.DecodeString(l.DataBase64)
			if l.Type != siem.UndecodableType || err != nil || !bytes.Equal(raw, junk) || l.Error == "" {
				t.Errorf("junk line: %+v", l)
			}
		case seq == copied.Sequence:
			if *l.Chain == "" || *l.Trust != "trusted" {
				t.Errorf("copy of seq 1: chain %q, trust %q; want a chain problem under a valid signature", *l.Chain, *l.Trust)
			}
		case forged[seq].Seq == 0:
			if *l.Trust != "trusted" || *l.Chain != "" || *l.Signer == "" {
				t.Errorf("seq %d: trust %q chain %q signer %q, want trusted, chained, signed", seq, *l.Trust, *l.Chain, *l.Signer)
			}
		}
	}
	if l := bySeq[1]; *l.Signer != sc.Keys.Runner.PublicKey() || l.Type != "io.auditflow.ExecutionStarted" {
		t.Errorf("seq 1: signer %q type %q", *l.Signer, l.Type)
	}

	for _, l := range feed(siem.Config{}) {
		if l.Type != siem.UndecodableType && *l.Trust != "unchecked" {
			t.Fatalf("without a list, seq %d: trust %q", *l.Seq, *l.Trust)
		}
	}
	only := feed(siem.Config{Trust: sc.List, Pipeline: trusttest.Pipeline, Change: "signed-ok", Since: time.Now().Add(-time.Hour)})
	if len(only) != 3 {
		t.Fatalf("--change signed-ok: %d lines, want 3", len(only))
	}
	for _, l := range only {
		if l.Subject != "signed-ok" {
			t.Errorf("--change signed-ok wrote %s's seq %d", l.Subject, *l.Seq)
		}
	}
	if *only[2].Chain == "" || *only[1].Chain != "" {
		t.Errorf("with --since, asked of the stream: chains %q %q, want only the copy out of chain", *only[1].Chain, *only[2].Chain)
	}
}

// stdout is Follow's output in a test: it keeps what is written and,
// once stop says so, ends the run cleanly (as SIGINT does) or, with
// crash, fails that write after taking its lines (a crash between the
// write and the acknowledgement).
type stdout struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	stop   func(lines int, last []byte) bool
	cancel context.CancelFunc
	crash  bool
}

var errCrash = errors.New("crashed")

func (w *stdout) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.stop(bytes.Count(w.buf.Bytes(), []byte("\n")), p) {
		if w.crash {
			return len(p), errCrash
		}
		w.cancel()
	}
	return len(p), nil
}

// runnerSigned starts a server and makes a runner's key and a trust list
// that trusts it for every pipeline.
func runnerSigned(tb testing.TB) (*natstest.Server, *trust.Signer, *trust.List) {
	tb.Helper()
	signer := trusttest.NewSigner(tb)
	list, err := trust.NewList(trust.Key{Key: signer.PublicKey(), Name: "runner-1", Roles: []trust.Role{trust.RoleRunner},
		Pipelines: []string{trust.AllPipelines}})
	if err != nil {
		tb.Fatal(err)
	}
	return natstest.Start(tb), signer, list
}

// TestFollowResumes: --follow from a durable consumer, stopped after some
// lines, then more events published, then a run that crashes between a
// write and its acknowledgement, then a last run: together the
// runs wrote every sequence, in order, without a gap. A clean stop repeats
// nothing; the crashed run's unacknowledged batch is written again.
func TestFollowResumes(t *testing.T) {
	srv, signer, list := runnerSigned(t)
	trusttest.PublishChained(t, srv.JS, signer, "billing", 5, 100)
	run := func(stop func(lines int, last []byte) bool, crash bool) ([]line, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		w := &stdout{stop: stop, cancel: cancel, crash: crash}
		f, err := siem.New(srv.JS, siem.Config{Trust: list, BatchSize: 7, Logger: natstest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		err = f.Follow(ctx, w)
		if ctx.Err() == context.DeadlineExceeded {
			t.Fatal("follow did not stop")
		}
		return parseLines(t, w.buf.Bytes()), err
	}
	var all []line
	after := func(n int) func(int, []byte) bool { return func(lines int, _ []byte) bool { return lines >= n } }
	ls, err := run(after(40), false) // stopped mid-stream
	if err != nil {
		t.Fatal(err)
	}
	all = append(all, ls...)
	trusttest.PublishChained(t, srv.JS, signer, "billing-2", 5, 100)
	ls, err = run(after(60), true)
	if !errors.Is(err, errCrash) {
		t.Fatalf("crash: %v", err)
	}
	all = append(all, ls...)
	ls, err = run(func(_ int, last []byte) bool { return bytes.Contains(last, []byte(`"auditflowseq":200,`)) }, false)
	if err != nil {
		t.Fatal(err)
	}
	all = append(all, ls...)

	seen := map[uint64]int{}
	var next uint64 = 1
	repeats := 0
	for _, l := range all {
		if *l.Trust != "trusted" || *l.Chain != "" {
			t.Errorf("seq %d: trust %q chain %q", *l.Seq, *l.Trust, *l.Chain)
		}
		seen[*l.Seq]++
		switch {
		case *l.Seq == next:
			next++
		case *l.Seq < next:
			repeats++
		default:
			t.Fatalf("gap: seq %d after %d", *l.Seq, next-1)
		}
	}
	if next != 201 {
		t.Fatalf("the runs wrote up to seq %d, want 200", next-1)
	}
	if repeats != 7 {
		t.Errorf("%d lines repeated, want the unacknowledged batch (7) only", repeats)
	}
	t.Logf("%d lines for 200 events: %d repeated (the crashed run's unacknowledged batch)", len(all), repeats)
}

// TestFollowConsumerDeleted: the durable consumer deleted while Follow
// runs is created again after the last line acknowledged: every sequence
// is written once, in order, trusted and in chain.
func TestFollowConsumerDeleted(t *testing.T) {
	srv, signer, list := runnerSigned(t)
	trusttest.PublishChained(t, srv.JS, signer, "billing", 5, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w := &stdout{stop: func(_ int, last []byte) bool { return bytes.Contains(last, []byte(`"auditflowseq":200,`)) }, cancel: cancel}
	f, err := siem.New(srv.JS, siem.Config{Trust: list, BatchSize: 7, Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.Follow(ctx, w) }()
	proctest.WaitFor(t, "the first 100 acknowledged", 20*time.Second, func() bool {
		c, err := srv.JS.Consumer(ctx, "AUDIT", siem.DefaultConsumer)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.AckFloor.Stream == 100
	})
	if err := srv.JS.DeleteConsumer(ctx, "AUDIT", siem.DefaultConsumer); err != nil {
		t.Fatal(err)
	}
	trusttest.PublishChained(t, srv.JS, signer, "billing-2", 5, 100)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ctx.Err() == context.DeadlineExceeded {
		t.Fatal("follow did not write sequence 200")
	}
	var next uint64 = 1
	for _, l := range parseLines(t, w.buf.Bytes()) {
		if *l.Seq != next || *l.Trust != "trusted" || *l.Chain != "" {
			t.Fatalf("seq %d (want %d): trust %q chain %q", *l.Seq, next, *l.Trust, *l.Chain)
		}
		next++
	}
	if next != 201 {
		t.Fatalf("wrote up to %d, want 200", next-1)
	}
}

package projector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/projector"
)

// TestScanResumesWhereItStopped: the scan's consumer is deleted behind
// its back after every batch (as a node's loss or the inactivity
// threshold would); it creates another where it stopped, so every message
// up to ToSeq is handed over once, in order, none after it although the
// stream grows meanwhile, and no consumer is left when it ends.
func TestScanResumesWhereItStopped(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js := srv.JS
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "SCAN", Subjects: []string{"scan.>"}}); err != nil {
		t.Fatal(err)
	}
	publish := func(n int) {
		for i := range n {
			if _, err := js.PublishAsync(fmt.Sprintf("scan.%d", i%7), []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		<-js.PublishAsyncComplete()
	}
	publish(2500)
	s, err := js.Stream(ctx, "SCAN")
	if err != nil {
		t.Fatal(err)
	}
	deleteConsumers := func() int {
		n := 0
		for name := range s.ConsumerNames(ctx).Name() {
			if err := s.DeleteConsumer(ctx, name); err == nil {
				n++
			}
		}
		return n
	}
	var got []uint64
	deleted := 0
	err = projector.Scan(ctx, js, projector.ScanConfig{Stream: "SCAN", FromSeq: 11, ToSeq: 2000, BatchSize: 300, Logger: natstest.Logger(t)},
		func(ms []projector.StreamMsg) error {
			for _, m := range ms {
				got = append(got, m.Seq)
			}
			deleted += deleteConsumers()
			publish(10) // the stream grows past ToSeq
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	if deleted == 0 {
		t.Fatal("no consumer was deleted under the scan")
	}
	if len(got) != 1990 {
		t.Fatalf("handed %d messages, want 1990 (11..2000)", len(got))
	}
	for i, seq := range got {
		if seq != uint64(11+i) {
			t.Fatalf("message %d is seq %d, want %d", i, seq, 11+i)
		}
	}
	if n := deleteConsumers(); n != 0 {
		t.Fatalf("%d consumers left behind", n)
	}
}

// TestReplayProgressJSON: camelCase names and milliseconds, as verify's
// report.
func TestReplayProgressJSON(t *testing.T) {
	b, err := json.Marshal(projector.ReplayProgress{Applied: 3, Seq: 9, First: 7, Target: 9, Elapsed: 1500 * time.Millisecond, EventsPerS: 2})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"applied":3,"skipped":0,"seq":9,"first":7,"target":9,"eventsPerSecond":2,"elapsedMs":1500}`; string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
}

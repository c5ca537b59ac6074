package producer_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/producer"
)

// TestMirrorCopiesOnAfterLeaderChange: the mirror auditflow makes copies
// the first event the audit stream's new leader acknowledges within
// seconds, after a kill of the old leader (no hand-over) and after a
// step-down, with the mirror's own leader on a surviving node. A mirror
// that copies through the server's ephemeral consumer instead (as
// auditflow made them before durable sourcing) copies nothing for 10 s to
// minutes after a kill; AUDITFLOW_MEASURE_MIRROR=1 measures that too:
//
//	AUDITFLOW_MEASURE_MIRROR=1 go test ./producer -run TestMirrorCopiesOnAfterLeaderChange -v
func TestMirrorCopiesOnAfterLeaderChange(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node clusters and leader kills; takes 15-30 s")
	}
	for _, tc := range []struct {
		name      string
		kill      bool // kill the audit stream's leader; else step it down
		ephemeral bool // a mirror without durable sourcing: measured, not asserted
		nudge     bool // step the mirror's leader down once the new audit leader writes
	}{
		{name: "kill", kill: true},
		{name: "stepdown"},
		{name: "ephemeral/kill", kill: true, ephemeral: true},
		{name: "ephemeral/kill+mirror-stepdown", kill: true, ephemeral: true, nudge: true},
		{name: "ephemeral/stepdown", ephemeral: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.ephemeral && os.Getenv("AUDITFLOW_MEASURE_MIRROR") == "" {
				t.Skip("a measurement: AUDITFLOW_MEASURE_MIRROR=1")
			}
			sinceChange, sinceAck := measureMirrorStall(t, tc.kill, tc.nudge, !tc.ephemeral)
			t.Logf("%s: the mirror held the new leader's first event %s after the change, %s after the leader acknowledged it",
				tc.name, sinceChange.Round(10*time.Millisecond), sinceAck.Round(10*time.Millisecond))
			if !tc.ephemeral && sinceAck > 3*time.Second {
				t.Errorf("the mirror copied the new leader's first event %s after it was acknowledged; want within 3 s", sinceAck.Round(10*time.Millisecond))
			}
		})
	}
}

// measureMirrorStall publishes events, changes the audit stream's leader
// and returns how long after the change, and after the new leader's first
// acknowledgement, the mirror holds that event.
func measureMirrorStall(t *testing.T, kill, nudge, durable bool) (sinceChange, sinceAck time.Duration) {
	c := natstest.StartCluster(t, 3)
	nc, js := c.Connect(t)
	ctx := context.Background()
	sc := producer.StreamConfig{Replicas: 3}
	p, err := producer.New(ctx, js, producer.Config{CreateStream: true, Stream: sc, RetryFor: 60 * time.Second, Logger: natstest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	const mirror = "AUDIT_MIRROR"
	if durable {
		if _, err := producer.EnsureMirror(ctx, js, sc, producer.Mirror{Name: mirror}); err != nil {
			t.Fatal(err)
		}
	} else {
		// The mirror as auditflow made it before durable sourcing: the
		// server copies through an ephemeral consumer.
		mc, err := producer.MirrorConfig(sc, producer.Mirror{Name: mirror})
		if err != nil {
			t.Fatal(err)
		}
		mc.Mirror.Consumer = nil
		if _, err := js.CreateStream(ctx, mc); err != nil {
			t.Fatal(err)
		}
	}
	leader := c.WaitStreamLeader(producer.DefaultStreamName, 10*time.Second)
	for c.WaitStreamLeader(mirror, 10*time.Second) == leader {
		c.StepDown(mirror)
	}

	var mu sync.Mutex
	var acked []ackAt
	var stopped atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; !stopped.Load(); i++ {
			e := events.New(events.ExecutionStarted, "billing", fmt.Sprintf("%04d-change", i%20))
			e.ExecutionID = fmt.Sprint(i)
			h, err := p.Publish(ctx, e)
			if err != nil {
				t.Errorf("publish %d: %v", i, err)
				return
			}
			mu.Lock()
			acked = append(acked, ackAt{h.Seq, time.Now()})
			mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	})
	defer func() { stopped.Store(true); wg.Wait() }()
	lastAcked := func() ackAt {
		mu.Lock()
		defer mu.Unlock()
		if len(acked) == 0 {
			return ackAt{}
		}
		return acked[len(acked)-1]
	}
	for lastAcked().seq < 50 {
		time.Sleep(20 * time.Millisecond)
	}
	changedAt := time.Now()
	before := lastAcked().seq
	if kill {
		c.Kill(leader)
	} else {
		c.StepDown(producer.DefaultStreamName)
	}
	// The first event acknowledged after the change.
	var first ackAt
	for first.seq == 0 {
		if a := lastAcked(); a.seq > before+1 {
			mu.Lock()
			for _, x := range acked {
				if x.seq > before+1 {
					first = x
					break
				}
			}
			mu.Unlock()
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the new %s leader acknowledged sequence %d %s after the change", producer.DefaultStreamName, first.seq, first.at.Sub(changedAt).Round(10*time.Millisecond))
	if nudge {
		for i := 0; ; i++ {
			var resp struct {
				Success bool `json:"success"`
				Error   any  `json:"error"`
			}
			m, err := nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+mirror, nil, 5*time.Second)
			if err == nil {
				_ = jsonUnmarshal(m.Data, &resp)
			}
			t.Logf("step down %s: %v %+v", mirror, err, resp)
			if err == nil && resp.Success || i == 5 {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	deadline := time.Now().Add(4 * time.Minute)
	for {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		ms, err := js.Stream(rctx, mirror)
		cancel()
		if err == nil {
			st := ms.CachedInfo().State
			if st.LastSeq >= first.seq {
				t.Logf("the mirror holds sequence %d", st.LastSeq)
				return time.Since(changedAt), time.Since(first.at)
			}
			if m := ms.CachedInfo().Mirror; m != nil {
				logMirror(t, st, m)
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the mirror copied nothing new in 4 minutes")
		}
		time.Sleep(500 * time.Millisecond)
	}
}

type ackAt struct {
	seq uint64
	at  time.Time
}

func logMirror(t *testing.T, st jetstream.StreamState, m *jetstream.StreamSourceInfo) {
	t.Logf("mirror: last %d, lag %d, active %s, error %v", st.LastSeq, m.Lag, m.Active.Round(time.Millisecond), m.Error)
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

package siem_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/trust"
)

// publishChained appends n signed, correctly chained events to the audit
// stream, spread round-robin over changes changes of pipeline, as fast as
// the server takes them. It expects to be the stream's only writer: it
// computes each event's sequence.
func publishChained(tb testing.TB, js jetstream.JetStream, signer *trust.Signer, pipeline string, changes, n int) {
	tb.Helper()
	ctx := context.Background()
	s, err := producer.EnsureStream(ctx, js, producer.StreamConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	seq := info.State.LastSeq
	type head struct {
		seq      uint64
		hash     string
		position uint64
	}
	heads := make([]head, changes)
	var futures []jetstream.PubAckFuture
	for i := range n {
		c := i % changes
		h := &heads[c]
		typ := events.ExecutionStarted
		if h.seq != 0 {
			typ = events.ExecutionSucceeded
		}
		e := events.New(typ, pipeline, fmt.Sprintf("change-%06d", c))
		e.ExecutionID, e.RunnerID, e.Host, e.LockToken = fmt.Sprintf("exec-%d", i), "runner-1", "host-1", 3
		if h.seq != 0 {
			e.PrevSeq, e.PrevHash, e.Position = h.seq, h.hash, h.position+1
		}
		b, err := events.Encode(e)
		if err != nil {
			tb.Fatal(err)
		}
		seq++
		*h = head{seq: seq, hash: events.Hash(b), position: e.Position}
		m := &nats.Msg{Subject: events.Subject(events.DefaultSubjectPrefix, pipeline, e.ChangeID), Data: b, Header: nats.Header{}}
		m.Header.Set(trust.Header, signer.Sign(b))
		f, err := js.PublishMsgAsync(m, jetstream.WithExpectLastSequence(seq-1))
		if err != nil {
			tb.Fatal(err)
		}
		futures = append(futures, f)
		if len(futures) == 2000 {
			waitAcks(tb, futures)
			futures = futures[:0]
		}
	}
	waitAcks(tb, futures)
}

func waitAcks(tb testing.TB, fs []jetstream.PubAckFuture) {
	tb.Helper()
	for _, f := range fs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			tb.Fatal(err)
		case <-time.After(30 * time.Second):
			tb.Fatal("no publish ack")
		}
	}
}

// line is what the tests read of a feed line, parsed independently of
// the feed's code.
type line struct {
	SpecVersion string  `json:"specversion"`
	ID          string  `json:"id"`
	Type        string  `json:"type"`
	Subject     string  `json:"subject"`
	DataBase64  string  `json:"data_base64"`
	Seq         *uint64 `json:"auditflowseq"`
	Signer      *string `json:"auditflowsigner"`
	Trust       *string `json:"auditflowtrust"`
	Chain       *string `json:"auditflowchain"`
	Error       string  `json:"auditflowerror"`
}

// parseLines checks that every line of out is one JSON object, a
// CloudEvents 1.0 document with the feed's four extensions, and returns
// them.
func parseLines(tb testing.TB, out []byte) []line {
	tb.Helper()
	var ls []line
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		raw := sc.Bytes()
		var attrs map[string]any
		if err := json.Unmarshal(raw, &attrs); err != nil {
			tb.Fatalf("line %d is not a JSON object: %v\n%s", len(ls)+1, err, raw)
		}
		var l line
		if err := json.Unmarshal(raw, &l); err != nil {
			tb.Fatal(err)
		}
		if l.SpecVersion != "1.0" || l.ID == "" || l.Type == "" {
			tb.Fatalf("line %d is not a CloudEvents 1.0 document: %s", len(ls)+1, raw)
		}
		if l.Seq == nil || l.Signer == nil || l.Trust == nil || l.Chain == nil {
			tb.Fatalf("line %d lacks an extension: %s", len(ls)+1, raw)
		}
		for k := range attrs {
			if !validAttributeName(k) {
				tb.Fatalf("line %d: attribute %q is not a valid CloudEvents name", len(ls)+1, k)
			}
		}
		ls = append(ls, l)
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	return ls
}

// validAttributeName: CloudEvents attribute names are lower-case letters
// and digits (data_base64 is the JSON format's own member).
func validAttributeName(k string) bool {
	if k == "data_base64" {
		return true
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return k != ""
}

package events_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/events"
)

// subject simulates one change's subject on a stream: it places each event
// after the subject's last message, as a producer does, and can append
// exact copies of earlier messages, as a replay does.
type subject struct {
	t    *testing.T
	seq  uint64 // the stream's last sequence (other subjects' messages take some)
	msgs []msg
}

type msg struct {
	seq  uint64
	data []byte
}

func (s *subject) last() events.Prev {
	if len(s.msgs) == 0 {
		return events.Prev{}
	}
	m := s.msgs[len(s.msgs)-1]
	e, err := events.Decode(m.data)
	return events.PrevOf(m.seq, events.Hash(m.data), e, err)
}

// publish places e after the subject's last message and stores it.
func (s *subject) publish(e events.Event) events.Event {
	s.t.Helper()
	if p := s.last(); p.Seq != 0 {
		e.PrevSeq, e.PrevHash, e.Position = p.Seq, p.Hash, uint64(len(s.msgs)+1)
	}
	b, err := events.Encode(e)
	if err != nil {
		s.t.Fatal(err)
	}
	s.append(b)
	back, _ := events.Decode(b)
	return back
}

func (s *subject) append(b []byte) {
	s.seq += 3 // other subjects' messages in between
	s.msgs = append(s.msgs, msg{s.seq, b})
}

// check judges the subject's i-th message against the one before it.
func (s *subject) check(i int) error {
	s.t.Helper()
	var prev events.Prev
	if i > 0 {
		m := s.msgs[i-1]
		e, err := events.Decode(m.data)
		prev = events.PrevOf(m.seq, events.Hash(m.data), e, err)
	}
	e, err := events.Decode(s.msgs[i].data)
	if err != nil {
		s.t.Fatal(err)
	}
	return events.CheckChain(e, prev)
}

func exec(t events.Type) events.Event {
	e := events.New(t, "billing", "0001")
	e.ExecutionID = "exec-1"
	if t == events.ExecutionFailed {
		e.ErrorMessage = "boom"
	}
	return e
}

func TestCheckChainAcceptsWhatWritersWrite(t *testing.T) {
	s := &subject{t: t}
	s.publish(exec(events.ExecutionStarted))
	s.append([]byte("junk on the subject")) // a bad message is part of the chain
	s.publish(exec(events.ExecutionFailed))
	s.publish(exec(events.ExecutionRolledBack))
	for i := range s.msgs {
		if i == 1 {
			continue // the junk itself is not an event
		}
		if err := s.check(i); err != nil {
			t.Errorf("message %d: %v", i, err)
		}
	}
}

// TestCheckChainRefusesEveryCopy: copies of earlier events published
// again, one or several in a row, are each out of the chain — including a
// copy that follows a copy of its own predecessor, whose prevHash matches.
func TestCheckChainRefusesEveryCopy(t *testing.T) {
	s := &subject{t: t}
	s.publish(exec(events.ExecutionStarted))   // 0
	s.publish(exec(events.ExecutionSucceeded)) // 1
	s.publish(exec(events.ExecutionStarted))   // 2
	s.publish(exec(events.ExecutionFailed))    // 3
	s.append(s.msgs[0].data)                   // 4: a copy of the first start
	s.append(s.msgs[1].data)                   // 5: and of its success, chained to the copy by hash
	s.append(s.msgs[5].data)                   // 6: the same bytes twice in a row
	for i, want := range map[int]string{
		4: "written as its change's first event",
		5: "written to follow stream sequence 3, but sequence 15 precedes it",
		6: "repeats the event id",
	} {
		err := s.check(i)
		if !errors.Is(err, events.ErrOutOfChain) || !strings.Contains(err.Error(), want) {
			t.Errorf("copy at message %d: %v, want out of chain: %q", i, err, want)
		}
	}
}

func TestCheckChainForksAndDowngrades(t *testing.T) {
	first := exec(events.ExecutionStarted)
	b, _ := events.Encode(first)
	prev := events.PrevOf(7, events.Hash(b), first, nil)

	fork := exec(events.ExecutionSucceeded)
	fork.PrevSeq, fork.PrevHash, fork.Position = 7, events.Hash([]byte("something else")), 2
	old := exec(events.ExecutionSucceeded)
	old.SchemaVersion, old.PrevHash = 2, prev.Hash
	bare := exec(events.ExecutionSucceeded)
	bare.SchemaVersion = 1
	for name, c := range map[string]struct {
		e    events.Event
		prev events.Prev
		want string
	}{
		"wrong hash":          {fork, prev, "prevHash is not the hash of stream sequence 7"},
		"first names a prev":  {fork, events.Prev{}, "but it is its change's first message"},
		"v2 after v4":         {old, prev, "a downgrade"},
		"v1 after chained v2": {bare, events.Prev{Seq: 3, Hash: prev.Hash, Version: 2, Chained: true}, "a downgrade"},
	} {
		if err := events.CheckChain(c.e, c.prev); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	// History written before the chain, or by writers that never chain.
	unchained := events.Prev{Seq: 3, Hash: prev.Hash, Version: 1}
	if err := events.CheckChain(bare, unchained); err != nil {
		t.Errorf("v1 after v1: %v", err)
	}
	old.PrevHash = unchained.Hash
	if err := events.CheckChain(old, unchained); err != nil {
		t.Errorf("v2 chained after v1: %v", err)
	}
}

func TestPlaceIsValidated(t *testing.T) {
	for name, mutate := range map[string]func(*events.Event){
		"position 0 with a prev":     func(e *events.Event) { e.PrevSeq, e.PrevHash = 4, events.Hash(nil) },
		"position 1 with a prev":     func(e *events.Event) { e.Position, e.PrevSeq, e.PrevHash = 1, 4, events.Hash(nil) },
		"position 2 without a prev":  func(e *events.Event) { e.Position = 2 },
		"position past its prevSeq":  func(e *events.Event) { e.Position, e.PrevSeq, e.PrevHash = 9, 4, events.Hash(nil) },
		"a place on a version 3 one": func(e *events.Event) { e.SchemaVersion, e.Position = 3, 1 },
	} {
		e := exec(events.ExecutionStarted)
		mutate(&e)
		if _, err := events.Encode(e); !errors.Is(err, events.ErrInvalidField) && !errors.Is(err, events.ErrMissingField) {
			t.Errorf("%s: %v, want refused", name, err)
		}
	}
}

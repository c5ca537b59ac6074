package cli

import (
	"bytes"
	"regexp"
	"testing"
	"time"
)

// TestProgressOffATerminal: off a terminal, an operation of unknown total
// (verify) prints how many events it has read and their rate, never
// "276000/-1 events, 0 events/s, about 0s left"; one of known total
// (replay, repair) how much of it, and "done" at the end; a quick one
// prints nothing.
func TestProgressOffATerminal(t *testing.T) {
	var buf bytes.Buffer
	p := &progress{w: &buf, what: "verify", every: 0, start: time.Now().Add(-2 * time.Second)}
	p.set(276000, -1, 0, 0)
	p.finish()
	if !regexp.MustCompile(`^verify: 276000 events read, 13\d{4}/s\n$`).MatchString(buf.String()) {
		t.Fatalf("unknown total: %q", buf.String())
	}

	buf.Reset()
	p = &progress{w: &buf, what: "replay", every: time.Hour, start: time.Now(), lastLine: time.Now()}
	p.set(50, 100, 1000, 50*time.Millisecond)
	p.set(100, 100, 1000, 0)
	p.finish()
	if buf.String() != "replay: 100/100 events, 1000/s, done\n" {
		t.Fatalf("known total: %q", buf.String())
	}

	buf.Reset()
	p = &progress{w: &buf, what: "verify", every: time.Hour, start: time.Now(), lastLine: time.Now()}
	p.set(8, -1, 0, 0)
	p.finish()
	if buf.Len() != 0 {
		t.Fatalf("a quick verify printed %q", buf.String())
	}
}

package verify_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/storetestenv"
	"github.com/auditflow/auditflow/stores"
)

// TestNonStrictEventIsReported: an event with invalid UTF-8 in its author
// is on the stream, and a store holds the row a lenient decoder made of it
// (U+FFFD for the bad byte), as a projector before strict decoding did.
// verify decodes as strictly as the projector: it reports the message as
// unreadable, saying why, and the row as one the stream does not back —
// not 0 altered rows because both sides were normalised the same way.
func TestNonStrictEventIsReported(t *testing.T) {
	srv := natstest.Start(t)
	history(t, srv.JS)
	st, _ := openSQLite(t)
	storetestenv.Feed(t, srv.JS, st)
	clean(t, verifyStore(t, srv.JS, st))

	lenient := events.New(events.ExecutionStarted, "billing", "0009-strict")
	lenient.ExecutionID, lenient.Author = "by-hand", "al\uFFFDice"
	b, err := events.Encode(lenient)
	if err != nil {
		t.Fatal(err)
	}
	raw := bytes.Replace(b, []byte("al\uFFFDice"), []byte("al\xffice"), 1)
	seq := publishRaw(t, srv.JS, "billing", "0009-strict", raw)
	storetestenv.Feed(t, srv.JS, st) // today's projector dead-letters it
	if err := st.Apply(context.Background(), stores.Batch{Checkpoint: "projector",
		Records: []stores.Record{{Seq: seq, Hash: events.Hash(raw), Event: lenient}}}); err != nil {
		t.Fatal(err)
	}

	rep := verifyStore(t, srv.JS, st)
	if rep.Undecodable != 1 || len(rep.Unreadable) != 1 || rep.Unreadable[0].Seq != seq ||
		!strings.Contains(rep.Unreadable[0].What, "not strict JSON data.author: invalid UTF-8") {
		t.Fatalf("unreadable %+v, want seq %d: not strict JSON data.author", rep.Unreadable, seq)
	}
	if !rep.Drift() || len(rep.Extra) != 1 || rep.Extra[0].Seq != seq {
		t.Fatalf("the lenient row: drift %v, extra %+v; want it reported", rep.Drift(), rep.Extra)
	}
}

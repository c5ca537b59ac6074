package projector_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/trust"
)

// TestNonStrictSignedEventsAreDeadLettered: a trusted runner key signs two
// events that readers may read differently — one with two "type" keys
// (encoding/json reads the last, a success; a reader that takes the first
// sees a failure), one with invalid UTF-8 in its author (encoding/json
// reads U+FFFD) — published on their change's subject in their place. The
// projector dead-letters each with a reason naming the problem and stores
// nothing of them; a valid signed event after them is stored.
func TestNonStrictSignedEventsAreDeadLettered(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	signer := trusttest.NewSigner(t)
	list, err := trust.NewList(trust.Key{Key: signer.PublicKey(), Name: "runner-1", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	p, stop := run(t, e.srv.JS, e.store, projector.Config{Trust: list})
	defer stop()

	encode := func(typ events.Type, change string) []byte {
		ev := events.New(typ, "billing", change)
		ev.Author, ev.ExecutionID, ev.RunnerID = "alice", "exec-"+change, "runner-1"
		ev.ErrorMessage = "exit status 1"
		b, err := events.Encode(ev)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	publishSigned := func(change string, data []byte) {
		t.Helper()
		msg := &nats.Msg{Subject: subjectOf(change), Data: data, Header: nats.Header{}}
		msg.Header.Set(trust.Header, signer.Sign(data))
		if _, err := e.srv.JS.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(0)); err != nil {
			t.Fatal(err)
		}
	}
	twoTypes := bytes.Replace(encode(events.ExecutionFailed, "two-types"), []byte(`"type":"io.auditflow.ExecutionFailed"`),
		[]byte(`"type":"io.auditflow.ExecutionFailed","type":"io.auditflow.ExecutionSucceeded"`), 1)
	badAuthor := bytes.Replace(encode(events.ExecutionStarted, "bad-author"), []byte(`"author":"alice"`), []byte("\"author\":\"al\xffice\""), 1)
	// What a lenient reader makes of them: a success, and a normalised author.
	var lenient struct {
		Type string `json:"type"`
		Data struct{ Author string }
	}
	if json.Unmarshal(twoTypes, &lenient) != nil || lenient.Type != "io.auditflow.ExecutionSucceeded" {
		t.Fatalf("encoding/json reads the two types as %q", lenient.Type)
	}
	if json.Unmarshal(badAuthor, &lenient) != nil || lenient.Data.Author != "al\uFFFDice" {
		t.Fatalf("encoding/json reads the author as %q", lenient.Data.Author)
	}
	publishSigned("two-types", twoTypes)
	publishSigned("bad-author", badAuthor)

	after, err := producer.New(ctx, e.srv.JS, producer.Config{Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	next := events.New(events.ExecutionStarted, "billing", "valid-after")
	next.ExecutionID = "exec-2"
	if _, err := after.Publish(ctx, next); err != nil {
		t.Fatal(err)
	}
	waitStored(t, e.store, "billing", "valid-after", 10*time.Second)
	waitFor(t, "two dead letters", 10*time.Second, func() bool { return p.Stats().DeadLettered == 2 })

	want := map[string]string{
		subjectOf("two-types"):  `events: not strict JSON type: the key "type" appears twice`,
		subjectOf("bad-author"): "events: not strict JSON data.author: invalid UTF-8",
	}
	for _, dl := range deadLetters(t, e.srv.JS) {
		subject := dl.Header.Get(projector.HeaderSubject)
		if r := dl.Header.Get(projector.HeaderReason); !strings.HasPrefix(r, want[subject]) || want[subject] == "" {
			t.Errorf("dead letter of %s: reason %q, want %q", subject, r, want[subject])
		}
		delete(want, subject)
	}
	if len(want) != 0 {
		t.Errorf("not dead-lettered: %v", want)
	}
	for _, change := range []string{"two-types", "bad-author"} {
		rows, err := e.store.History(ctx, stores.HistoryQuery{Pipeline: "billing", ChangeID: change})
		if err != nil || len(rows) != 0 {
			t.Errorf("%s: stored %+v (%v), want nothing", change, rows, err)
		}
	}
}

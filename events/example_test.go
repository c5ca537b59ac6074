package events_test

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/auditflow/auditflow/events"
)

func ExampleEncode() {
	e := events.New(events.ExecutionSucceeded, "billing-service", "0042-add-invoice-index")
	e.ID = "019ac1f2-80a1-7b55-8c31-55d0c8a2f001" // normally a fresh UUIDv7 from New
	e.OccurredAt = time.Date(2026, 11, 26, 10, 30, 1, 0, time.UTC)
	e.ExecutionID, e.Duration = "exec-1", 1780*time.Millisecond
	b, err := events.Encode(e)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(b))

	back, err := events.Decode(b)
	fmt.Println(back.State(), back.Duration, err)
	// Output:
	// {"specversion":"1.0","id":"019ac1f2-80a1-7b55-8c31-55d0c8a2f001","source":"urn:auditflow:pipeline:billing-service","type":"io.auditflow.ExecutionSucceeded","time":"2026-11-26T10:30:01Z","subject":"0042-add-invoice-index","datacontenttype":"application/json","dataschema":"https://auditflow.dev/schemas/execution-event/v4.json","data":{"schemaVersion":4,"pipeline":"billing-service","changeId":"0042-add-invoice-index","executionId":"exec-1","durationMs":1780,"recovery":"MANUAL_INTERVENTION","position":1}}
	// APPLIED 1.78s <nil>
}

func ExampleSubject() {
	fmt.Println(events.Subject(events.DefaultSubjectPrefix, "billing", "db.users v2"))
	// Output: audit.exec.billing.db%2Eusers%20v2
}

func ExampleCheckSubject() {
	e := events.New(events.ExecutionFailed, "billing", "0002-backfill")
	// Read from the stream on another change's subject:
	err := events.CheckSubject(events.DefaultSubjectPrefix, "audit.exec.billing.0001-create", e)
	fmt.Println(err)
	fmt.Println(errors.Is(err, events.ErrWrongSubject))
	// Output:
	// events: event on the wrong subject: event for change "0002-backfill" of pipeline "billing" published on change "0001-create"'s subject (audit.exec.billing.0001-create)
	// true
}

func ExampleTruncate() {
	out := "psql: connecting… " + strings.Repeat("NOTICE: row skipped\n", 10) + "ERROR: duplicate key"
	fmt.Println(events.Truncate(out, 80))
	// Output:
	// psql: connecting… NOTICE… [truncated 189 bytes] …pped
	// ERROR: duplicate key
}

package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
)

// Verify results are recorded on a stream of their own, so that others
// (the audit console, monitoring) can show when a store was last proved
// equal to the stream, and what was wrong if it was not. The audit stream
// is not the place: it holds executions only, and its subjects are
// runners'.
const (
	// ResultsStream keeps the last results per store.
	ResultsStream = "AUDIT_VERIFY"
	// ResultsPrefix starts a result's subject: ResultsPrefix.<store>.
	ResultsPrefix = "audit.verify"
	// resultsPerStore bounds what ResultsStream keeps of each store.
	resultsPerStore = 100
)

// ErrNoResultsStream: ResultsStream does not exist (auditflow init creates
// it), so a result cannot be recorded.
var ErrNoResultsStream = errors.New("verify: the results stream does not exist")

// ResultsStreamConfig is ResultsStream as auditflow init creates it: file
// storage, the last 100 results of each store, direct gets (readers need
// no consumer).
func ResultsStreamConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{Name: ResultsStream, Subjects: []string{ResultsPrefix + ".>"}, Storage: jetstream.FileStorage,
		Replicas: max(replicas, 1), MaxMsgsPerSubject: resultsPerStore, AllowDirect: true,
		Description: "auditflow verify results (the last 100 per store)"}
}

// Result is a verify run in brief: what Record publishes. Counts has one
// entry per kind of problem the report lists (missing, extra, …), 0 when
// there were none, so a reader sees what was checked.
type Result struct {
	Store        string         `json:"store"`
	At           time.Time      `json:"at"`
	DurationMs   int64          `json:"durationMs"`
	By           string         `json:"by,omitempty"` // who ran it (user@host)
	OK           bool           `json:"ok"`           // no problem open: verify exited 0
	LastSeq      uint64         `json:"lastSeq"`
	StreamEvents int            `json:"streamEvents"`
	StoreRows    int            `json:"storeRows"`
	Changes      int            `json:"changes"`
	TrustChecked bool           `json:"trustChecked"`
	Counts       map[string]int `json:"counts"`
}

// Result summarises r for store, run at at by by.
func (r *Report) Result(store, by string, at time.Time) Result {
	bad, downgrades := r.OpenStreamProblems()
	return Result{
		Store: store, At: at.UTC(), DurationMs: r.Elapsed.Milliseconds(), By: by, OK: !r.Problems(),
		LastSeq: r.LastSeq, StreamEvents: r.StreamEvents, StoreRows: r.StoreRows, Changes: r.Changes,
		TrustChecked: r.TrustChecked,
		Counts: map[string]int{
			"missing": len(r.Missing), "extra": len(r.Extra), "mismatched": len(r.Mismatched), "issues": len(r.Issues),
			"streamChain": len(r.StreamChain), "storeChain": len(r.StoreChain),
			"staleTokens": len(r.Unacknowledged()), "streamProblems": len(bad), "downgrades": len(downgrades),
			"untrusted": len(r.OpenUntrusted()), "outOfChain": len(r.OpenOutOfChain()),
		},
	}
}

// resultSubject is where store's results go. A store name is a subject
// token as the projector's AuditWrite subjects use it.
func resultSubject(store string) string { return ResultsPrefix + "." + events.EncodeToken(store) }

// Record publishes res on ResultsStream, acknowledged (durable) before it
// returns. It fails with ErrNoResultsStream if the stream is missing.
func Record(ctx context.Context, js jetstream.JetStream, res Result) error {
	if res.Store == "" {
		return errors.New("verify: a result needs its store's name")
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	if _, err := js.Publish(ctx, resultSubject(res.Store), b, jetstream.WithExpectStream(ResultsStream)); err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("%w: %s: create it with `auditflow init` (as the admin user): %w", ErrNoResultsStream, ResultsStream, err)
		}
		return fmt.Errorf("verify: recording the result: %w", err)
	}
	return nil
}

// LastResult returns the newest result recorded for store, false if there
// is none (or no results stream).
func LastResult(ctx context.Context, js jetstream.JetStream, store string) (Result, bool, error) {
	s, err := js.Stream(ctx, ResultsStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return Result{}, false, nil
	}
	if err != nil {
		return Result{}, false, fmt.Errorf("verify: results stream: %w", err)
	}
	m, err := s.GetLastMsgForSubject(ctx, resultSubject(store))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Result{}, false, nil
	}
	if err != nil {
		return Result{}, false, fmt.Errorf("verify: last result of %s: %w", store, err)
	}
	var res Result
	if err := json.Unmarshal(m.Data, &res); err != nil {
		return Result{}, false, fmt.Errorf("verify: the last result of %s (sequence %d) is not a result: %w", store, m.Sequence, err)
	}
	return res, true, nil
}

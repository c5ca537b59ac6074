package inspect

import (
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

// HistoryRow is the JSON form of a changeLog row. State is the state the
// row stores — what a state filter matched — so a listing shows what it
// filtered on.
type HistoryRow struct {
	Seq          uint64            `json:"seq"`
	EventID      string            `json:"eventId"`
	Type         events.Type       `json:"type"`
	State        events.State      `json:"state"`
	Pipeline     string            `json:"pipeline"`
	ChangeID     string            `json:"changeId"`
	ExecutionID  string            `json:"executionId,omitempty"`
	Author       string            `json:"author,omitempty"`
	TargetSystem string            `json:"targetSystem,omitempty"`
	Host         string            `json:"host,omitempty"`
	RunnerID     string            `json:"runnerId,omitempty"`
	LockToken    uint64            `json:"lockToken,omitempty"`
	OccurredAt   time.Time         `json:"occurredAt"`
	DurationMs   int64             `json:"durationMs"`
	ErrorMessage string            `json:"errorMessage,omitempty"`
	Operator     string            `json:"operator,omitempty"`
	Reason       string            `json:"reason,omitempty"`
	Metadata     map[string]string `json:"metadata,omitempty"`
	Hash         string            `json:"hash,omitempty"`
	PrevHash     string            `json:"prevHash,omitempty"`
	PrevSeq      uint64            `json:"prevSeq,omitempty"`
	Position     uint64            `json:"position,omitempty"`
	// Chain and Trust are the projector's verdicts: why the event does not
	// extend its change's chain (its state is then OUT_OF_CHAIN), why it
	// is not trusted; absent when it does, and is.
	Chain string `json:"chain,omitempty"`
	Trust string `json:"trust,omitempty"`
	// Mark is what to show beside the state (stores.Record.Mark):
	// UNTRUSTED, UNSIGNED, or absent for a signed event no trust list
	// refused. Signer is the signing key, if any.
	Mark   string `json:"mark,omitempty"`
	Signer string `json:"signer,omitempty"`
}

// HistoryRows are rows in their JSON form, in the same order.
func HistoryRows(rows []stores.Record) []HistoryRow {
	out := make([]HistoryRow, len(rows))
	for i, r := range rows {
		out[i] = HistoryRow{Seq: r.Seq, EventID: r.ID, Type: r.Type, State: r.Shown(), Pipeline: r.Pipeline,
			ChangeID: r.ChangeID, ExecutionID: r.ExecutionID, Author: r.Author, TargetSystem: r.TargetSystem,
			Host: r.Host, RunnerID: r.RunnerID, LockToken: r.LockToken, OccurredAt: r.OccurredAt,
			DurationMs: r.Duration.Milliseconds(), ErrorMessage: r.ErrorMessage, Operator: r.Operator,
			Reason: r.Reason, Metadata: r.Metadata, Hash: r.Hash, PrevHash: r.PrevHash, PrevSeq: r.PrevSeq,
			Position: r.Position, Chain: r.Chain, Trust: r.Trust, Mark: r.Mark(), Signer: r.Signer}
	}
	return out
}

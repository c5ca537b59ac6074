package verify

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
)

// Plan is what Repair will do.
type Plan struct {
	// Rebuild: the store has no targeted repair (stores.Repairer), so it
	// is reset and replayed from the stream.
	Rebuild bool
	Fix     stores.Repair
}

// Empty reports whether there is nothing to repair.
func (p Plan) Empty() bool { return !p.Rebuild && p.Fix.Empty() }

// Lines describes the plan, one line per correction.
func (p Plan) Lines() []string {
	if p.Rebuild {
		return []string{"rebuild: this store has no targeted repair; reset it and replay the whole stream"}
	}
	var out []string
	for _, r := range p.Fix.Put {
		out = append(out, fmt.Sprintf("write   changeLog %s/%s seq %d (%s) from the stream", r.Pipeline, r.ChangeID, r.Seq, r.Type))
	}
	for _, r := range p.Fix.Delete {
		out = append(out, fmt.Sprintf("delete  changeLog %s/%s seq %d (event %s): not in the stream", r.Pipeline, r.ChangeID, r.Seq, r.ID))
	}
	for _, i := range p.Fix.Issues {
		out = append(out, fmt.Sprintf("write   issue %s/%s as %s %s (seq %d)", i.Pipeline, i.ChangeID, i.Status, i.State, i.Seq))
	}
	for _, i := range p.Fix.DeleteIssues {
		out = append(out, fmt.Sprintf("delete  issue %s/%s: no such change in the stream", i.Pipeline, i.ChangeID))
	}
	return out
}

// PlanRepair turns a report into corrections, reading the stream's
// versions of missing and altered rows.
func PlanRepair(ctx context.Context, js jetstream.JetStream, store stores.Store, rep *Report, cfg Config) (Plan, error) {
	if !rep.Drift() {
		return Plan{}, nil
	}
	if cfg.Trust == nil && rep.StoreVerdicts > 0 {
		return Plan{}, fmt.Errorf("%w: %d store rows carry a projector's trust verdicts; rows written without the list would lose them, and the issues forgeries opened would close: repair with the projectors' trust list", ErrNeedsTrust, rep.StoreVerdicts)
	}
	if _, ok := store.(stores.Repairer); !ok {
		return Plan{Rebuild: true}, nil
	}
	if err := cfg.Stream.Validate(); err != nil {
		return Plan{}, err
	}
	stream, err := js.Stream(ctx, cfg.Stream.Name)
	if err != nil {
		return Plan{}, fmt.Errorf("repair: %w", err)
	}
	var p Plan
	for _, r := range append(append([]Row(nil), rep.Missing...), mismatchedRows(rep)...) {
		rec, err := StreamRecord(ctx, stream, r.Seq, cfg.Trust)
		if err != nil {
			return Plan{}, fmt.Errorf("repair: %w", err)
		}
		p.Fix.Put = append(p.Fix.Put, rec)
	}
	for _, r := range rep.Extra {
		e := events.Event{ID: r.EventID, Pipeline: r.Pipeline, ChangeID: r.ChangeID, Type: r.Type}
		p.Fix.Delete = append(p.Fix.Delete, stores.Record{Seq: r.Seq, Event: e})
	}
	for _, d := range rep.Issues {
		if d.Want != nil {
			p.Fix.Issues = append(p.Fix.Issues, *d.Want)
		} else {
			p.Fix.DeleteIssues = append(p.Fix.DeleteIssues, *d.Have)
		}
	}
	return p, nil
}

func mismatchedRows(rep *Report) []Row {
	out := make([]Row, len(rep.Mismatched))
	for i, m := range rep.Mismatched {
		out[i] = m.Row
	}
	return out
}

// Repair carries out a plan: targeted corrections, or Reset and a replay of
// the whole stream (progress goes to replay.Progress).
func Repair(ctx context.Context, js jetstream.JetStream, store stores.Store, p Plan, replay projector.ReplayConfig) error {
	if p.Empty() {
		return nil
	}
	if !p.Rebuild {
		r, ok := store.(stores.Repairer)
		if !ok {
			return fmt.Errorf("repair: the plan needs targeted repair, which this store lacks")
		}
		return r.Repair(ctx, p.Fix)
	}
	if err := store.Reset(ctx); err != nil {
		return fmt.Errorf("repair: reset: %w", err)
	}
	replay.FromSeq = 1
	if _, err := projector.Replay(ctx, js, store, replay); err != nil {
		return fmt.Errorf("repair: replay: %w", err)
	}
	return nil
}

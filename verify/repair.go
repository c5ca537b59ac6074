package verify

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
)

// repairCheckpoint is the progress record Repair's Apply batches keep in
// the store (a store keeps one per name; the projectors' are untouched).
const repairCheckpoint = "repair"

// Plan is what Repair will do.
//
// Whatever a store's Apply can do is done through Apply: it is idempotent
// and guarded (an issue row is only replaced by an event with a higher
// sequence), so a projector writing meanwhile is never undone. Only what
// Apply cannot do goes through stores.Repairer: rewriting an altered row,
// deleting a stray one, and correcting an issue row that is wrong at its
// own sequence or ahead of the stream.
type Plan struct {
	// Rebuild: the plan needs targeted repair (Fix) and the store has
	// none (stores.Repairer), so it is reset and replayed from the stream.
	Rebuild bool
	// Rows are the stream's events the store is missing, and Issues the
	// newest event of each change whose issue row is missing or behind:
	// both are applied with Store.Apply.
	Rows, Issues []stores.Record
	// Fix holds the corrections Apply cannot make. An issue written or
	// deleted by it is followed by its change's newest event on the stream,
	// through Apply, so that it ends no older than what a projector wrote.
	Fix stores.Repair
	// Snapshot is the report's stream sequence.
	Snapshot uint64
	// seen is the sequence of each issue row Fix corrects as verify read
	// it: a row found at another when Repair runs has moved on since (a
	// projector wrote a newer event) and is left alone.
	seen map[key]uint64
}

// Empty reports whether there is nothing to repair.
func (p Plan) Empty() bool { return !p.Rebuild && p.Fix.Empty() && len(p.Rows)+len(p.Issues) == 0 }

// Lines describes the plan, one line per correction.
func (p Plan) Lines() []string {
	if p.Rebuild {
		return []string{"rebuild: this store has no targeted repair; reset it and replay the whole stream"}
	}
	var out []string
	for _, r := range p.Fix.Put {
		out = append(out, fmt.Sprintf("write   changeLog %s/%s seq %d (%s) from the stream", r.Pipeline, r.ChangeID, r.Seq, r.Type))
	}
	for _, r := range p.Rows {
		out = append(out, fmt.Sprintf("apply   changeLog %s/%s seq %d (%s) from the stream", r.Pipeline, r.ChangeID, r.Seq, r.Type))
	}
	for _, r := range p.Fix.Delete {
		out = append(out, fmt.Sprintf("delete  changeLog %s/%s seq %d (event %s): not in the stream", r.Pipeline, r.ChangeID, r.Seq, r.ID))
	}
	for _, r := range p.Issues {
		i := stores.IssueOf(r)
		out = append(out, fmt.Sprintf("apply   issue %s/%s: the stream's seq %d makes it %s %s", r.Pipeline, r.ChangeID, r.Seq, i.Status, i.State))
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
	if err := cfg.Stream.Validate(); err != nil {
		return Plan{}, err
	}
	stream, err := projector.LookupStream(ctx, js, cfg.Stream.Name, 0, cfg.Logger)
	if err != nil {
		return Plan{}, fmt.Errorf("repair: %w", err)
	}
	p := Plan{Snapshot: rep.LastSeq, seen: map[key]uint64{}}
	read := func(seq uint64) (stores.Record, error) {
		m, err := getMsg(ctx, stream, seq)
		if err != nil {
			return stores.Record{}, fmt.Errorf("repair: %w", err)
		}
		return recordOf(ctx, js, stream, cfg.Stream.SubjectPrefix, m, cfg.Trust)
	}
	for _, r := range rep.Missing {
		rec, err := read(r.Seq)
		if err != nil {
			return Plan{}, err
		}
		p.Rows = append(p.Rows, rec)
	}
	for _, m := range rep.Mismatched {
		rec, err := read(m.Seq)
		if err != nil {
			return Plan{}, err
		}
		p.Fix.Put = append(p.Fix.Put, rec)
	}
	for _, r := range rep.Extra {
		e := events.Event{ID: r.EventID, Pipeline: r.Pipeline, ChangeID: r.ChangeID, Type: r.Type}
		p.Fix.Delete = append(p.Fix.Delete, stores.Record{Seq: r.Seq, Event: e})
	}
	for _, d := range rep.Issues {
		if d.Have != nil {
			p.seen[key{d.Pipeline, d.ChangeID}] = d.Have.Seq
		}
		switch {
		case d.Want == nil:
			p.Fix.DeleteIssues = append(p.Fix.DeleteIssues, *d.Have)
		case d.Have == nil || d.Have.Seq < d.Want.Seq:
			rec, err := read(d.Want.Seq)
			if err != nil {
				return Plan{}, err
			}
			p.Issues = append(p.Issues, rec)
		default:
			p.Fix.Issues = append(p.Fix.Issues, *d.Want)
		}
	}
	if _, ok := store.(stores.Repairer); !ok && !p.Fix.Empty() {
		return Plan{Rebuild: true, Snapshot: rep.LastSeq}, nil
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
// the whole stream (progress goes to replay.Progress). Targeted repair is
// safe while projectors write (see Plan); a rebuild is not: stop them
// first.
func Repair(ctx context.Context, js jetstream.JetStream, store stores.Store, p Plan, replay projector.ReplayConfig) error {
	if p.Empty() {
		return nil
	}
	if p.Rebuild {
		if err := store.Reset(ctx); err != nil {
			return fmt.Errorf("repair: reset: %w", err)
		}
		replay.FromSeq = 1
		if _, err := projector.Replay(ctx, js, store, replay); err != nil {
			return fmt.Errorf("repair: replay: %w", err)
		}
		return nil
	}
	if err := replay.Stream.Validate(); err != nil {
		return err
	}
	var heal []key
	if !p.Fix.Empty() {
		r, ok := store.(stores.Repairer)
		if !ok {
			return fmt.Errorf("repair: the plan needs targeted repair, which this store lacks")
		}
		fix, err := leaveMovedIssues(ctx, store, p.Fix, p.seen)
		if err != nil {
			return err
		}
		if err := r.Repair(ctx, fix); err != nil {
			return fmt.Errorf("repair: %w", err)
		}
		for _, i := range slices.Concat(fix.Issues, fix.DeleteIssues) {
			heal = append(heal, key{i.Pipeline, i.ChangeID})
		}
	}
	if recs := slices.Concat(p.Rows, p.Issues); len(recs) > 0 {
		if err := store.Apply(ctx, stores.Batch{Checkpoint: repairCheckpoint, Records: recs}); err != nil {
			return fmt.Errorf("repair: apply the stream's events: %w", err)
		}
	}
	return healIssues(ctx, js, store, replay, heal)
}

// leaveMovedIssues drops from fix the issue corrections whose row has
// moved since verify read it (seen): a projector wrote a newer event
// there, which a correction from verify's snapshot would roll back.
func leaveMovedIssues(ctx context.Context, store stores.Store, fix stores.Repair, seen map[key]uint64) (stores.Repair, error) {
	moved := func(i stores.Issue) (bool, error) {
		page, err := store.Issues(ctx, stores.IssueQuery{Pipeline: i.Pipeline, ChangeID: i.ChangeID, Limit: 1})
		if err != nil {
			return false, fmt.Errorf("repair: read issue %s/%s: %w", i.Pipeline, i.ChangeID, err)
		}
		var now uint64
		if len(page) > 0 {
			now = page[0].Seq
		}
		return now != seen[key{i.Pipeline, i.ChangeID}], nil
	}
	keep := func(is []stores.Issue) ([]stores.Issue, error) {
		var out []stores.Issue
		for _, i := range is {
			m, err := moved(i)
			if err != nil {
				return nil, err
			}
			if !m {
				out = append(out, i)
			}
		}
		return out, nil
	}
	var err error
	if fix.Issues, err = keep(fix.Issues); err != nil {
		return fix, err
	}
	fix.DeleteIssues, err = keep(fix.DeleteIssues)
	return fix, err
}

// healIssues applies, for each change, its newest event on the stream
// now, through the guarded Apply: after an issue row was written or
// deleted outright, a projector that stored a newer event just before
// would otherwise never see its issue again.
func healIssues(ctx context.Context, js jetstream.JetStream, store stores.Store, replay projector.ReplayConfig, changes []key) error {
	if len(changes) == 0 {
		return nil
	}
	stream, err := projector.LookupStream(ctx, js, replay.Stream.Name, 0, replay.Logger)
	if err != nil {
		return fmt.Errorf("repair: %w", err)
	}
	var recs []stores.Record
	for _, k := range changes {
		subject := events.Subject(replay.Stream.SubjectPrefix, k.pipeline, k.change)
		m, err := stream.GetLastMsgForSubject(ctx, subject)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("repair: read the newest event of %s/%s: %w", k.pipeline, k.change, err)
		}
		if e, err := events.Decode(m.Data); err != nil || events.CheckSubject(replay.Stream.SubjectPrefix, m.Subject, e) != nil {
			continue // a bad message: no store holds it
		}
		rec, err := recordOf(ctx, js, stream, replay.Stream.SubjectPrefix, m, replay.Trust)
		if err != nil {
			return fmt.Errorf("repair: the newest event of %s/%s: %w", k.pipeline, k.change, err)
		}
		recs = append(recs, rec)
	}
	if len(recs) == 0 {
		return nil
	}
	if err := store.Apply(ctx, stores.Batch{Checkpoint: repairCheckpoint, Records: recs}); err != nil {
		return fmt.Errorf("repair: apply the newest events of the issues written: %w", err)
	}
	return nil
}

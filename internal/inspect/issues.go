package inspect

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

// IssueView is an issue as shown: with its effective state.
type IssueView struct {
	stores.Issue
	Shown         string `json:"shownState"`    // the state to show: UNCERTAIN for a stale start
	NeedsOperator bool   `json:"needsOperator"` // open, or stale in progress
	Stale         bool   `json:"stale"`
}

// ViewOf is i as shown at now: an execution started more than staleAfter
// ago without an end is shown as UNCERTAIN and needs an operator.
func ViewOf(i stores.Issue, now time.Time, staleAfter time.Duration) IssueView {
	v := IssueView{Issue: i, Shown: string(i.State), NeedsOperator: i.Status == stores.IssueOpen}
	if i.Trust != "" {
		v.Shown += " (UNTRUSTED)"
	}
	if i.Stale(now, staleAfter) {
		v.Stale, v.NeedsOperator, v.Shown = true, true, string(events.StateUncertain)+" (stale start)"
	}
	return v
}

// FixCommand is the operator command that records resolution ("applied"
// or "rolled-back") for a change, with the reason left to fill in. Ids come
// from events, so any that a shell would interpret are quoted: people copy
// this command.
func FixCommand(pipeline, change, resolution string) string {
	return fmt.Sprintf("auditflow issue fix -p %s -c %s -r %s --reason \"...\"", ShellQuote(pipeline), ShellQuote(change), resolution)
}

// ShellQuote returns s as one POSIX shell word: unchanged when it holds
// only characters no shell interprets, else in single quotes.
func ShellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@+,=") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// FixCommands are the commands that can resolve v: none when nothing is
// to be done (closed, or a runner is applying the change now).
func FixCommands(v IssueView) []string {
	if !v.NeedsOperator && v.Trust == "" && v.Chain == "" {
		return []string{}
	}
	return []string{FixCommand(v.Pipeline, v.ChangeID, "applied"), FixCommand(v.Pipeline, v.ChangeID, "rolled-back")}
}

// Guide says what happened, what to inspect and which fix applies
// (auditflow issue get --guidance).
func Guide(v IssueView) string {
	fix := func(r string) string { return FixCommand(v.Pipeline, v.ChangeID, r) }
	target := "the target system"
	if v.TargetSystem != "" {
		target = "the target system " + v.TargetSystem
	}
	retry := ""
	if v.Recovery != events.AlwaysRetry {
		retry = "\n  - If the change is idempotent, set its recovery to ALWAYS_RETRY instead: the next run re-runs it."
	}
	switch {
	case v.Chain != "":
		return "What happened: the change's newest event (stream sequence " + strconv.FormatUint(v.Seq, 10) + ") does not extend the change's chain: " + v.Chain + ".\n" +
			"It is a copy of an earlier event published again (a replay: an old event's bytes and signature), a fork, or an old writer's event; whatever it claims, it is not believed: the issue stays open and runners stop at the change.\n" +
			"Inspect: the history below (the copy is its own row, OUT_OF_CHAIN, beside the event it copies; nats stream get AUDIT " + strconv.FormatUint(v.Seq, 10) + "), who may publish on the change's subject, and " + target + ": what does it really hold?\n" +
			"Fix, one of:\n  - The change is in effect: " + fix("applied") +
			"\n  - It is not, or you undid it: " + fix("rolled-back") + " (the next run applies it again)"
	case v.Trust != "":
		return "What happened: the change's newest event claims " + string(v.State) + ", but it is not trusted: " + v.Trust + ".\n" +
			"Anyone who can publish on the audit subjects could have written it, so runners stop at the change instead of believing it.\n" +
			"Inspect: who published it (the history below; nats stream get AUDIT " + strconv.FormatUint(v.Seq, 10) + "), and " + target + ": what does it really hold?\n" +
			"Fix, signed with an operator key the trust list names (--signing-key), one of:\n  - The change is in effect: " + fix("applied") +
			"\n  - It is not, or you undid it: " + fix("rolled-back") + " (the next run applies it again)"
	case v.Status == stores.IssueClosed:
		return "Nothing to do: the change is " + string(v.State) + "."
	case v.Status == stores.IssueInProgress && !v.Stale:
		return "A runner is applying this change now (started " + time.Since(v.UpdatedAt).Round(time.Second).String() +
			" ago). Wait for it; check `auditflow lock list` for the holder of the pipeline lock."
	case v.State == events.StateFailed:
		return "What happened: the change failed (" + v.ErrorMessage + ") and was not rolled back, so it may be partly applied.\n" +
			"Inspect: " + target + " (the error and trace above show where it stopped).\n" +
			"Fix, one of:\n  - You finished the change by hand, or it took effect: " + fix("applied") +
			"\n  - You undid it, or nothing was applied: " + fix("rolled-back") + " (the next run applies it again)" + retry
	case v.State == events.StateOverlapped:
		return "What happened: an execution of this change overlapped another writer (" + v.ErrorMessage + ").\n" +
			"It ran after its lease on the pipeline lock had passed to another holder, or after someone else recorded an event on the change; the record says whether that writer ran the change too or only marked it uncertain or resolved it. What ran may have changed " + target + ".\n" +
			"Inspect: " + target + " — did the change take effect once, twice, partly? A target that fences on AUDITFLOW_LOCK_TOKEN refused the stale holder's writes; the history below shows both executions and their lock tokens.\n" +
			"Fix, one of:\n  - The target holds the change as intended: " + fix("applied") +
			"\n  - You undid it: " + fix("rolled-back") + " (the next run applies it again)\n" +
			"Then find out why a runner outlived its lease (paused VM, partition, clock): `auditflow verify` lists every event written with a stale lock token."
	case v.State == events.StateRollbackFailed:
		return "What happened: the change failed, then its rollback failed too (" + v.ErrorMessage + "): the target is in an unknown, probably partial state.\n" +
			"Inspect: " + target + "; compare it with what the change and its rollback do.\n" +
			"Fix, one of:\n  - You completed the change by hand: " + fix("applied") +
			"\n  - You undid it by hand: " + fix("rolled-back") + " (the next run applies it again)"
	default: // UNCERTAIN, or a stale start
		return "What happened: the change started but its runner never recorded an outcome (it crashed, was killed, or lost the stream).\n" +
			"Inspect: " + target + " — did the change take effect? Check `auditflow lock list`: no runner should hold the pipeline's lock.\n" +
			"Fix, one of:\n  - It took effect: " + fix("applied") + "\n  - It did not, or you undid it: " + fix("rolled-back") +
			" (the next run applies it again)" + retry
	}
}

// AllIssues reads every issue row matching q, a page at a time (a store
// returns at most stores.MaxLimit per call), newest first.
func AllIssues(ctx context.Context, st stores.Store, q stores.IssueQuery) ([]stores.Issue, error) {
	q.Limit = stores.MaxLimit
	var all []stores.Issue
	for {
		page, err := st.Issues(ctx, q)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if len(page) < q.Limit {
			return all, nil
		}
		q.BeforeSeq = page[len(page)-1].Seq
	}
}

// CountIssues counts the issue rows matching q: with the store's count
// where it has one (stores.IssueCounter), else by reading them.
func CountIssues(ctx context.Context, st stores.Store, q stores.IssueQuery) (int, error) {
	if c, ok := st.(stores.IssueCounter); ok {
		return c.CountIssues(ctx, q)
	}
	all, err := AllIssues(ctx, st, q)
	return len(all), err
}

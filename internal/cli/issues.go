package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/inspect"
	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/internal/render"
	"github.com/auditflow/auditflow/internal/storeflags"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/runner"
	"github.com/auditflow/auditflow/stores"
)

func (a *app) issueCommand() *cobra.Command {
	issue := &cobra.Command{Use: "issue", Short: "Changes that need an operator: list, inspect, fix"}
	var pipeline, change string
	var all, failOnOpen bool
	var staleAfter time.Duration
	list := &cobra.Command{
		Use:   "list",
		Short: "Open issues: failed, rollback failed, uncertain (and executions started long ago without an end)",
		Example: `  auditflow issue list
  auditflow issue list -p billing --json
  auditflow issue list --fail-on-open          # a CI gate: exit 3 while an issue is open`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.openStore(cmd.Context())
			if err != nil {
				return err
			}
			rows, err := inspect.AllIssues(cmd.Context(), st, stores.IssueQuery{Pipeline: pipeline})
			if err != nil {
				return err
			}
			now := time.Now()
			out := []inspect.IssueView{}
			open := 0
			for _, i := range rows {
				v := inspect.ViewOf(i, now, staleAfter)
				if v.NeedsOperator {
					open++
				}
				if all || v.NeedsOperator {
					out = append(out, v)
				}
			}
			if failOnOpen && open > 0 {
				defer func() { fmt.Fprintf(a.errOut, "auditflow: %d open issue(s) (--fail-on-open)\n", open) }()
			}
			err = a.emit(out, func(w *tabwriter.Writer) {
				if len(out) == 0 {
					fmt.Fprintln(w, "no open issues")
					return
				}
				fmt.Fprintln(w, "PIPELINE\tCHANGE\tSTATE\tSINCE (UTC)\tRECOVERY\tTARGET\tERROR")
				for _, v := range out {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Pipeline, v.ChangeID, v.Shown, v.UpdatedAt.UTC().Format(time.DateTime),
						v.Recovery, render.Dash(v.TargetSystem), render.Dash(render.Clip(v.ErrorMessage, 60)))
				}
			})
			if err == nil && failOnOpen && open > 0 {
				return fmt.Errorf("%w: %d open issue(s)", errProblems, open)
			}
			return err
		},
	}
	list.Flags().StringVarP(&pipeline, "pipeline", "p", "", "only this pipeline")
	list.Flags().BoolVar(&all, "all", false, "every change's row, closed and running ones too")
	list.Flags().BoolVar(&failOnOpen, "fail-on-open", false, "exit 3 when an issue is open (a CI gate)")
	list.Flags().DurationVar(&staleAfter, "stale-after", stores.DefaultStaleAfter, "report an execution started this long ago without an end as UNCERTAIN")

	var guidance bool
	get := &cobra.Command{
		Use:   "get",
		Short: "One change: its state, its last error, its history, and with --guidance what to do",
		Long: `get shows a change as the store holds it. With --guidance (or when the store
has no row for the change) it also reads the change's newest message on the
stream: if that is not a valid event of the change — garbage, or another
change's event published on its subject, which projectors dead-letter — runs
stop at it, and get says which message it is and how to resolve the change.`,
		Example: "  auditflow issue get -p billing -c 0002-add-customer-index --guidance",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if pipeline == "" || change == "" {
				return usage("--pipeline and --change are required")
			}
			ctx := cmd.Context()
			var rows []stores.Issue
			var storeMissing error
			st, err := a.openStore(ctx)
			switch {
			case errors.Is(err, storeflags.ErrStoreMissing) && guidance:
				// The stream alone can still say what blocks the change
				// (a message that is not its event); what it is otherwise,
				// only the store says.
				storeMissing = err
			case err != nil:
				return err
			default:
				if rows, err = st.Issues(ctx, stores.IssueQuery{Pipeline: pipeline, ChangeID: change}); err != nil {
					return err
				}
			}
			// The store holds only valid events: what runners stop at may
			// be a message it never had (dead-lettered). The stream says.
			var bad *producer.BadEventError
			var untrusted *runner.UntrustedEvent
			var oop *producer.OutOfPlaceError
			var newestSeq uint64
			if guidance || len(rows) == 0 {
				if bad, untrusted, oop, newestSeq, err = a.newestProblem(ctx, pipeline, change); err != nil {
					if len(rows) == 0 {
						return err
					}
					fmt.Fprintf(a.errOut, "auditflow: the guidance is from the store alone: %v\n", err)
				}
			}
			problem := bad != nil || untrusted != nil || oop != nil
			switch {
			case storeMissing != nil && !problem && newestSeq > 0:
				return fmt.Errorf("change %q of pipeline %q has events on the stream (the newest at sequence %d), but its state, history and "+
					"guidance come from the audit store, and %w", change, pipeline, newestSeq, storeMissing)
			case storeMissing != nil && !problem:
				return fmt.Errorf("%w: change %q of pipeline %q has no events on the stream either; and %w", errNotFound, change, pipeline, storeMissing)
			case storeMissing != nil:
				fmt.Fprintf(a.errOut, "auditflow: %v\n(the guidance below is from the stream alone)\n", storeMissing)
			case len(rows) == 0 && bad == nil:
				return fmt.Errorf("%w: no change %q in pipeline %q in this store", errNotFound, change, pipeline)
			}
			var hist []stores.Record
			v := inspect.IssueView{Issue: stores.Issue{Pipeline: pipeline, ChangeID: change}, Shown: "-"}
			detail := issueDetail{}
			if len(rows) > 0 {
				if hist, err = st.History(ctx, stores.HistoryQuery{Pipeline: pipeline, ChangeID: change, Limit: 50}); err != nil {
					return err
				}
				v = inspect.ViewOf(rows[0], time.Now(), staleAfter)
				detail.ErrorTrace = rows[0].ErrorTrace
			}
			detail.IssueView, detail.History = v, inspect.HistoryRows(hist)
			if bad != nil {
				detail.BadNewest = &badNewestView{Seq: bad.Head.Seq, Subject: bad.Subject, Size: bad.Size,
					WrongSubject: bad.WrongSubject(), Problem: strings.TrimPrefix(bad.Err.Error(), "events: ")}
			}
			if guidance {
				detail.Guidance = inspect.Guide(v)
				if bad != nil || untrusted != nil || oop != nil {
					ce := &runner.ChangeError{Pipeline: pipeline, ChangeID: change, TargetSystem: v.TargetSystem, State: v.State,
						Bad: bad, Untrusted: untrusted, OutOfPlace: oop, Err: runner.ErrManualIntervention}
					detail.Guidance = ce.Guidance(`auditflow issue fix -p %s -c %s -r applied|rolled-back --reason "..." --signing-key KEY`)
				}
			}
			return a.emit(detail, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "change\t%s of pipeline %s\n", v.ChangeID, v.Pipeline)
				if bad != nil {
					fmt.Fprintf(w, "BLOCKED\tits newest message on the stream (sequence %d, %d bytes) is not a valid event of it: %s\n",
						bad.Head.Seq, bad.Size, detail.BadNewest.Problem)
				}
				if oop != nil {
					fmt.Fprintf(w, "BLOCKED\tits newest event on the stream (sequence %d, %s) is not where it was written: message %d of the change, written after sequence %d, but the change has %d messages\n",
						oop.Head.Seq, oop.Type, oop.Position, oop.PrevSeq, oop.Head.Position)
				}
				if len(rows) == 0 {
					fmt.Fprintln(w, "store\tno row for this change: it holds valid events only (projectors dead-letter the rest)")
				} else {
					fmt.Fprintf(w, "state\t%s (%s) since %s UTC\n", v.Shown, v.Status, v.UpdatedAt.UTC().Format(time.DateTime))
					fmt.Fprintf(w, "execution\t%s, author %s, target %s, recovery %s\n", render.Dash(v.ExecutionID),
						render.Dash(v.Author), render.Dash(v.TargetSystem), v.Recovery)
					if v.ErrorMessage != "" {
						fmt.Fprintf(w, "error\t%s\n", v.ErrorMessage)
					}
					if v.Operator != "" {
						fmt.Fprintf(w, "resolved by\t%s: %s\n", v.Operator, v.Reason)
					}
					if v.Trust != "" {
						fmt.Fprintf(w, "UNTRUSTED\tthe newest event is not trusted: %s\n", v.Trust)
					}
					if v.Chain != "" {
						fmt.Fprintf(w, "OUT OF CHAIN\tthe newest event does not extend the change's chain: %s\n", v.Chain)
					}
					_ = w.Flush()
					if detail.ErrorTrace != "" {
						fmt.Fprintf(w, "\ntrace (last lines):\n%s\n", tail(detail.ErrorTrace, 15))
					}
					fmt.Fprintln(w, "\nhistory (newest first):")
					historyTable(w, hist)
				}
				if guidance {
					_ = w.Flush()
					fmt.Fprintf(w, "\nwhat to do:\n%s\n", detail.Guidance)
				}
			})
		},
	}
	get.Flags().StringVarP(&pipeline, "pipeline", "p", "", "the pipeline (required)")
	get.Flags().StringVarP(&change, "change", "c", "", "the change id (required)")
	get.Flags().BoolVar(&guidance, "guidance", false, "explain what happened, what to inspect and which fix applies")
	get.Flags().DurationVar(&staleAfter, "stale-after", stores.DefaultStaleAfter, "treat an execution started this long ago without an end as UNCERTAIN")

	var resolution, reason, operator string
	var force bool
	fix := &cobra.Command{
		Use:   "fix",
		Short: "Record an operator's decision: the change is applied, or rolled back (the next run applies it again)",
		Long: `fix publishes a ManuallyResolved event on the audit stream, with your identity
and reason, after the change's newest event (refused if the change moved in the
meantime). Every projector then closes the issue in its store, and the next
runner run skips the change (applied) or runs it again (rolled-back).

A decision about a change that a runner is still applying would be overtaken
by that runner, or make the change run twice. So fix takes the pipeline lock
while it records (the event carries its fencing token), and refuses (exit 5)
while a runner holds the lock, or while the change's start is younger than
the lease (its runner may be alive but paused). --force records anyway: if a
runner is still applying the change, its outcome is recorded as OVERLAPPED
and, with rolled-back, the next run applies the change a second time.

fix also resolves a change whose newest message on the stream is not a
valid event of it (garbage, or another change's event on its subject: see
issue get --guidance): the decision is recorded after that message, which
the stream keeps, and runs go on from it.

With --signing-key the event is signed, and the operator recorded is the
key's identity — "<name> (<public key>)" from the trust list (--trust), or
the public key and --operator without one — not free text. With --trust the
key must be one the list trusts as an operator for the pipeline, --operator
may only repeat its name, and a change whose newest event the list does not
trust (a forgery: see issue get --guidance) can be resolved whatever that
event claims.`,
		Example: `  auditflow issue fix -p billing -c 0002-add-customer-index -r applied --reason "index exists; checked in psql"`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res := events.Resolution(strings.ToUpper(strings.ReplaceAll(resolution, "-", "_")))
			switch {
			case pipeline == "" || change == "":
				return usage("--pipeline and --change are required")
			case !res.Valid():
				return usage("--resolution: want applied or rolled-back, got %q", resolution)
			case strings.TrimSpace(reason) == "":
				return usage("--reason is required: it is recorded in the audit log")
			}
			signer, list, err := a.loadSigning()
			if err != nil {
				return err
			}
			if signer != nil && !cmd.Flags().Changed("operator") && !a.localKey {
				operator = "" // the key says who: $USER is not an identity
			}
			switch {
			case signer == nil && operator == "":
				return usage("--operator is required (no $USER to default to)")
			case len(reason) > events.MaxMessageLen:
				return usage("--reason: %d bytes; the limit is %d (events.MaxMessageLen)", len(reason), events.MaxMessageLen)
			case len(operator) > events.MaxTextLen:
				return usage("--operator: %d bytes; the limit is %d (events.MaxTextLen)", len(operator), events.MaxTextLen)
			}
			host, _ := os.Hostname()
			r := runner.Resolution{Pipeline: pipeline, ChangeID: change, Resolution: res, Operator: operator, Reason: reason,
				Host: host, RunnerID: "auditflow-cli", Force: force, Trust: list}
			if a.localKey {
				// The embedded mode's one local key signs for whoever runs
				// it: record their name beside the key, as runner --embedded does.
				r.Trust = nil
			}
			if operator, err = runner.OperatorOf(signer, r); err != nil { // before anything is asked of NATS
				return usageError{fixError{err}}
			}
			js, err := a.connect()
			if err != nil {
				return err
			}
			prod, err := producer.New(cmd.Context(), js, producer.Config{Stream: a.streamConfig(), Signer: signer, Logger: a.log})
			if err != nil {
				return err
			}
			var locker *lock.Locker
			if !force {
				if locker, err = a.locker(cmd.Context()); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(a.errOut, "auditflow: --force: recording without the pipeline lock. If a runner is still applying this change, its outcome will be recorded as OVERLAPPED, and with rolled-back the change will run a second time.")
			}
			seq, err := runner.Resolve(cmd.Context(), prod, locker, r)
			switch {
			case errors.Is(err, runner.ErrInvalidConfig):
				return usageError{fixError{err}}
			case errors.Is(err, runner.ErrNothingToResolve):
				return fmt.Errorf("%w: %w", errNotFound, err)
			case errors.Is(err, runner.ErrUnsafeResolution):
				return fmt.Errorf("%w: %w", errRefused, err)
			case err != nil:
				return err
			}
			if a.embedded {
				// Project the decision before returning, so that the next
				// command (issue list, stats, the console) sees the issue closed.
				if _, err := a.openStore(cmd.Context()); err == nil {
					err = a.catchUp(cmd.Context())
				}
				if err != nil {
					a.log.Warn("the decision is recorded on the stream, but the embedded store could not be brought up to date; the next command will", "err", err)
				}
			}
			out := map[string]any{"pipeline": pipeline, "changeId": change, "resolution": res, "operator": operator, "seq": seq}
			return a.emit(out, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "recorded: %s/%s resolved as %s by %s (stream sequence %d)\n", pipeline, change, res, operator, seq)
			})
		},
	}
	fix.Flags().StringVarP(&pipeline, "pipeline", "p", "", "the pipeline (required)")
	fix.Flags().StringVarP(&change, "change", "c", "", "the change id (required)")
	fix.Flags().StringVarP(&resolution, "resolution", "r", "", "applied or rolled-back (required)")
	fix.Flags().StringVar(&reason, "reason", "", "why; recorded in the audit log (required)")
	fix.Flags().StringVar(&operator, "operator", natsconn.Env("USER", ""), "who decides (default $USER); with --signing-key the key's identity is recorded instead (see --help)")
	fix.Flags().BoolVar(&force, "force", false, "record without the pipeline lock, even while a runner may be applying the change (see --help)")
	issue.AddCommand(list, get, fix)
	return issue
}

// fixError words an error of runner.ErrInvalidConfig from recording a
// decision as what it is: a problem with issue fix's flags or keys, not
// with a runner's configuration.
type fixError struct{ err error }

func (e fixError) Error() string {
	return "issue fix: " + strings.TrimPrefix(e.err.Error(), runner.ErrInvalidConfig.Error()+": ")
}

func (e fixError) Unwrap() error { return e.err }

type issueDetail struct {
	inspect.IssueView
	ErrorTrace string               `json:"errorTrace,omitempty"`
	History    []inspect.HistoryRow `json:"history"`
	// BadNewest is the change's newest message on the stream when it is
	// not a valid event of the change (read with --guidance, or when the
	// store has no row for it).
	BadNewest *badNewestView `json:"badNewestMessage,omitempty"`
	Guidance  string         `json:"guidance,omitempty"`
}

// badNewestView is a change's newest message that is not its event.
type badNewestView struct {
	Seq          uint64 `json:"seq"`
	Subject      string `json:"subject"`
	Size         int    `json:"size"`
	WrongSubject bool   `json:"wrongSubject"` // another change's event; else it does not decode
	Problem      string `json:"problem"`
}

// newestProblem reads a change's newest message from the stream
// (read-only: the stream is neither created nor checked) and returns it if
// it is not a valid event of the change, if it is not where it was written
// (a copy published again), or, judged with --trust, if it is an event the
// trust list does not accept; nils if none, or the change has no events.
// It also returns the newest message's sequence (0: the change has none).
func (a *app) newestProblem(ctx context.Context, pipeline, change string) (*producer.BadEventError, *runner.UntrustedEvent, *producer.OutOfPlaceError, uint64, error) {
	list, err := a.trustList()
	if err != nil {
		return nil, nil, nil, 0, err
	}
	js, err := a.connect()
	if err != nil {
		return nil, nil, nil, 0, err
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	last, head, err := producer.ReadLast(rctx, js, a.streamConfig(), pipeline, change)
	var bad *producer.BadEventError
	var oop *producer.OutOfPlaceError
	switch {
	case errors.As(err, &bad):
		return bad, nil, nil, bad.Head.Seq, nil
	case errors.As(err, &oop):
		return nil, nil, oop, oop.Head.Seq, nil
	case err == nil:
		return nil, runner.Judge(list, last, head), nil, head.Seq, nil
	case errors.Is(err, producer.ErrNoEvents):
		return nil, nil, nil, 0, nil
	}
	return nil, nil, nil, 0, fmt.Errorf("read the change's newest message from the stream: %w", err)
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return "  " + strings.Join(parts, "\n  ")
}

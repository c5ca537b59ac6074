package cli

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/inspect"
	"github.com/auditflow/auditflow/internal/render"
	"github.com/auditflow/auditflow/stores"
)

type listFlags struct {
	pipeline, change, state string
	since                   sinceFlag
	limit                   int
}

func (f *listFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.pipeline, "pipeline", "p", "", "only this pipeline")
	cmd.Flags().StringVarP(&f.change, "change", "c", "", "only this change id")
	cmd.Flags().StringVarP(&f.state, "state", "s", "", "only this state: "+statesList())
	cmd.Flags().Var(&f.since, "since", "only events since then: a duration back from now (24h) or an RFC 3339 time")
	cmd.Flags().IntVar(&f.limit, "limit", 100, "at most this many rows")
}

func statesList() string {
	var s []string
	for _, st := range events.States {
		s = append(s, string(st))
	}
	return strings.Join(s, ", ")
}

func (a *app) auditCommand() *cobra.Command {
	audit := &cobra.Command{Use: "audit", Short: "The audit record: what ran where, when, by whom"}
	var f listFlags
	var history bool
	list := &cobra.Command{
		Use:   "list",
		Short: "Each change's current state, or with --history every execution event",
		Example: `  auditflow audit list
  auditflow audit list -p billing -s FAILED --since 24h --json
  auditflow audit list --history -c 0002-add-customer-index`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			state := events.State(strings.ToUpper(f.state))
			if state != "" && !slices.Contains(events.States, state) {
				return usage("--state: want one of %s, got %q", statesList(), f.state)
			}
			if f.limit < 1 {
				return usage("--limit: want at least 1, got %d", f.limit)
			}
			st, err := a.openStore(cmd.Context())
			if err != nil {
				return err
			}
			now := time.Now()
			if history {
				q := stores.HistoryQuery{Pipeline: f.pipeline, ChangeID: f.change, State: state, Limit: f.limit}
				if f.since.set() {
					q.Since = f.since.from(now)
				}
				rows, err := st.History(cmd.Context(), q)
				if err != nil {
					return err
				}
				return a.emit(inspect.HistoryRows(rows), func(w *tabwriter.Writer) { historyTable(w, rows) })
			}
			// The current state of each change is its issue row (the newest
			// event of the change).
			rows, err := inspect.AllIssues(cmd.Context(), st, stores.IssueQuery{Pipeline: f.pipeline, ChangeID: f.change})
			if err != nil {
				return err
			}
			rows = slices.DeleteFunc(rows, func(i stores.Issue) bool {
				return (state != "" && i.State != state) || (f.since.set() && i.UpdatedAt.Before(f.since.from(now)))
			})
			rows = rows[:min(len(rows), f.limit)]
			if rows == nil {
				rows = []stores.Issue{}
			}
			return a.emit(rows, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "PIPELINE\tCHANGE\tSTATE\tSTATUS\tUPDATED (UTC)\tAUTHOR\tTARGET\tSEQ")
				for _, i := range rows {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", i.Pipeline, i.ChangeID, i.State, i.Status,
						i.UpdatedAt.UTC().Format(time.DateTime), render.Dash(i.Author), render.Dash(i.TargetSystem), i.Seq)
				}
			})
		},
	}
	f.register(list)
	list.Flags().BoolVar(&history, "history", false, "every execution event, newest first, instead of each change's current state")
	audit.AddCommand(list)
	return audit
}

func historyTable(w *tabwriter.Writer, rows []stores.Record) {
	fmt.Fprintln(w, "SEQ\tTIME (UTC)\tPIPELINE\tCHANGE\tSTATE\tDURATION\tBY\tDETAIL")
	for _, r := range rows {
		row := render.RowOf(r, 60)
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, row.Time,
			r.Pipeline, r.ChangeID, row.State, row.Duration, row.By, row.Detail)
	}
}

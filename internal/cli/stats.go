package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/inspect"
	"github.com/auditflow/auditflow/projector"
	"github.com/auditflow/auditflow/stores"
)

// statsOut is stats --json. Every state is present in executions (0 when
// none); lag, writes and deadLetters are null when NATS could not be asked
// (notes says why); durations are milliseconds.
type statsOut struct {
	Since       time.Time            `json:"since"`
	Executions  map[events.State]int `json:"executions"`
	Failures    int                  `json:"failures"`
	OpenIssues  int                  `json:"openIssues"`
	StaleStarts int                  `json:"staleStarts"`
	inspect.Health
}

func (a *app) statsCommand() *cobra.Command {
	var since sinceFlag
	_ = since.Set("1h")
	var pipeline string
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Executions by state, failures, open issues, dead letters, projection lag and store write latency over a window",
		Example: `  auditflow stats
  auditflow stats --since 24h -p billing --json
  auditflow stats --since 2026-11-29T08:00:00Z`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			st, err := a.openStore(ctx)
			if err != nil {
				return err
			}
			out := statsOut{Since: since.from(time.Now()).UTC(), Executions: map[events.State]int{}, Health: inspect.Health{Notes: []string{}}}
			for _, s := range events.States {
				out.Executions[s] = 0
			}
			q := stores.HistoryQuery{Pipeline: pipeline, Since: out.Since, Limit: stores.MaxLimit}
			for {
				page, err := st.History(ctx, q)
				if err != nil {
					return err
				}
				if len(page) == 0 {
					break
				}
				for _, r := range page {
					state := r.Shown() // as stored: a copy published again counts OUT_OF_CHAIN
					out.Executions[state]++
					if state == events.StateFailed || state == events.StateRollbackFailed {
						out.Failures++
					}
				}
				q.BeforeSeq = page[len(page)-1].Seq
			}
			is, err := inspect.AllIssues(ctx, st, stores.IssueQuery{Pipeline: pipeline})
			if err != nil {
				return err
			}
			for _, i := range is {
				switch {
				case i.Status == stores.IssueOpen:
					out.OpenIssues++
				case i.Stale(time.Now(), stores.DefaultStaleAfter):
					out.StaleStarts++
				}
			}
			if js, err := a.connect(); err != nil {
				out.Notes = append(out.Notes, "no lag or write latency: "+err.Error())
			} else {
				out.Health = inspect.ReadHealth(ctx, js, st, inspect.Projection{Stream: a.streamConfig().Name, Consumer: a.consumerName(), Kind: a.store.Kind}, out.Since, a.log)
			}
			return a.emit(out, func(w *tabwriter.Writer) { statsTable(w, out, since.describe()) })
		},
	}
	cmd.Flags().Var(&since, "since", "the window: a duration back from now (1h) or an RFC 3339 time")
	cmd.Flags().StringVarP(&pipeline, "pipeline", "p", "", "only this pipeline (executions and issues)")
	return cmd
}

func statsTable(w *tabwriter.Writer, out statsOut, window string) {
	fmt.Fprintf(w, "since\t%s UTC (%s)\n", out.Since.Format(time.DateTime), window)
	var states []string
	for _, s := range events.States {
		if n := out.Executions[s]; n > 0 {
			states = append(states, fmt.Sprintf("%s %d", s, n))
		}
	}
	if len(states) == 0 {
		states = []string{"none"}
	}
	fmt.Fprintf(w, "events by state\t%s\n", joinComma(states))
	fmt.Fprintf(w, "failures\t%d\n", out.Failures)
	fmt.Fprintf(w, "open issues\t%d (plus %d executions started over %s ago without an end)\n", out.OpenIssues, out.StaleStarts, stores.DefaultStaleAfter)
	if l := out.Lag; l != nil {
		if l.StoreCheckpoint >= l.StreamLastSeq && l.Pending+l.AckPending > 0 {
			// Stored by a catch-up (the embedded mode's commands, a
			// replay) ahead of the consumer, which will deliver them again.
			fmt.Fprintf(w, "projection lag\t0 events not yet stored: stream at %d, store checkpoint %d (consumer %s has %d events to deliver again, already stored)\n",
				l.StreamLastSeq, l.StoreCheckpoint, l.Consumer, l.Pending+l.AckPending)
		} else {
			fmt.Fprintf(w, "projection lag\t%d events not yet stored (%d undelivered, %d in flight) by consumer %s; stream at %d, store checkpoint %d\n",
				l.Pending+l.AckPending, l.Pending, l.AckPending, l.Consumer, l.StreamLastSeq, l.StoreCheckpoint)
		}
	}
	for _, m := range out.Mirrors {
		fmt.Fprintf(w, "mirror\t%s\n", m.Say())
	}
	if wr := out.Writes; wr != nil {
		fmt.Fprintf(w, "store writes\t%d writes of %d events, %d failed; latency p50 %s, p95 %s, max %s\n",
			wr.Writes, wr.Events, wr.Errors, wr.P50.Round(time.Microsecond), wr.P95.Round(time.Microsecond), wr.Max.Round(time.Microsecond))
	}
	if d := out.DeadLetters; d != nil {
		fmt.Fprintf(w, "dead letters\t%d in the window, %d in all (auditflow deadletter list)\n", d.Since, d.Total)
	}
	if h := out.Held; h != nil {
		fmt.Fprintf(w, "parked\t%d events waiting in %s for a projector that reads their schema version\n", *h, projector.HeldStream)
	}
	for _, n := range out.Notes {
		fmt.Fprintf(w, "note\t%s\n", n)
	}
}

func joinComma(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ", "
		}
		out += x
	}
	return out
}

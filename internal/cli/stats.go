package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/events"
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
	Lag         *lagOut              `json:"lag"`
	Writes      *writesOut           `json:"writes"`
	DeadLetters *deadLettersOut      `json:"deadLetters"`
	Notes       []string             `json:"notes"`
}

// deadLettersOut counts the messages on AUDIT_DEADLETTER.
type deadLettersOut struct {
	Total uint64 `json:"total"` // on the stream, all time
	Since int    `json:"since"` // within the window
}

type lagOut struct {
	Consumer        string `json:"consumer"`
	Pending         uint64 `json:"pending"`    // on the stream, not yet delivered
	AckPending      uint64 `json:"ackPending"` // delivered, not yet stored
	StreamLastSeq   uint64 `json:"streamLastSeq"`
	StoreCheckpoint uint64 `json:"storeCheckpoint"`
}

type writesOut struct {
	Writes int           `json:"writes"`
	Events int           `json:"events"`
	Errors int           `json:"errors"`
	P50    time.Duration `json:"-"`
	P95    time.Duration `json:"-"`
	Max    time.Duration `json:"-"`
	P50Ms  float64       `json:"p50Ms"`
	P95Ms  float64       `json:"p95Ms"`
	MaxMs  float64       `json:"maxMs"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

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
			out := statsOut{Since: since.from(time.Now()).UTC(), Executions: map[events.State]int{}, Notes: []string{}}
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
					out.Executions[r.State()]++
					if r.State() == events.StateFailed || r.State() == events.StateRollbackFailed {
						out.Failures++
					}
				}
				q.BeforeSeq = page[len(page)-1].Seq
			}
			is, err := allIssues(ctx, st, stores.IssueQuery{Pipeline: pipeline})
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
				if out.Lag, err = a.lag(ctx, js, st); err != nil {
					out.Notes = append(out.Notes, "no lag: "+err.Error())
				}
				if out.Writes, err = a.writes(ctx, js, out.Since); err != nil {
					out.Notes = append(out.Notes, "no write latency: "+err.Error())
				}
				if out.DeadLetters, err = a.deadLetterCounts(ctx, js, out.Since); err != nil {
					out.Notes = append(out.Notes, "no dead-letter count: "+err.Error())
				}
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
		fmt.Fprintf(w, "projection lag\t%d events not yet stored (%d undelivered, %d in flight) by consumer %s; stream at %d, store checkpoint %d\n",
			l.Pending+l.AckPending, l.Pending, l.AckPending, l.Consumer, l.StreamLastSeq, l.StoreCheckpoint)
	}
	if wr := out.Writes; wr != nil {
		fmt.Fprintf(w, "store writes\t%d writes of %d events, %d failed; latency p50 %s, p95 %s, max %s\n",
			wr.Writes, wr.Events, wr.Errors, wr.P50.Round(time.Microsecond), wr.P95.Round(time.Microsecond), wr.Max.Round(time.Microsecond))
	}
	if d := out.DeadLetters; d != nil {
		fmt.Fprintf(w, "dead letters\t%d in the window, %d in all (auditflow deadletter list)\n", d.Since, d.Total)
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

func (a *app) lag(ctx context.Context, js jetstream.JetStream, st stores.Store) (*lagOut, error) {
	sc := a.streamConfig()
	cons, err := js.Consumer(ctx, sc.Name, a.consumerName())
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w (is a projector for this store running? set --consumer)", a.consumerName(), err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, err
	}
	s, err := js.Stream(ctx, sc.Name)
	if err != nil {
		return nil, err
	}
	cp, err := st.Checkpoint(ctx, a.consumerName())
	if err != nil {
		return nil, err
	}
	return &lagOut{Consumer: a.consumerName(), Pending: info.NumPending, AckPending: uint64(info.NumAckPending),
		StreamLastSeq: s.CachedInfo().State.LastSeq, StoreCheckpoint: cp}, nil
}

// writes summarises the AuditWrite events of this store kind since then.
func (a *app) writes(ctx context.Context, js jetstream.JetStream, since time.Time) (*writesOut, error) {
	s, err := js.Stream(ctx, projector.WritesStream)
	if err != nil {
		return nil, err
	}
	subject := projector.DefaultWritesPrefix + "." + a.store.Kind
	out := &writesOut{}
	last, err := s.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return out, nil // this store kind has written nothing
	}
	if err != nil {
		return nil, err
	}
	var durs []time.Duration
	sc := projector.ScanConfig{Stream: projector.WritesStream, Subjects: []string{subject}, Since: since, ToSeq: last.Sequence, Logger: a.log}
	if since.IsZero() {
		sc.FromSeq = 1
	}
	err = projector.Scan(ctx, js, sc, func(msgs []projector.StreamMsg) error {
		for _, m := range msgs {
			var w projector.AuditWrite
			if json.Unmarshal(m.Data, &w) != nil {
				continue
			}
			out.Writes++
			if w.Error != "" {
				out.Errors++
				continue
			}
			out.Events += w.Count
			durs = append(durs, w.Duration)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(durs) > 0 {
		slices.Sort(durs)
		out.P50, out.P95, out.Max = durs[len(durs)/2], durs[len(durs)*95/100], durs[len(durs)-1]
		out.P50Ms, out.P95Ms, out.MaxMs = ms(out.P50), ms(out.P95), ms(out.Max)
	}
	return out, nil
}

// deadLetterCounts counts the dead letters in all and since then.
func (a *app) deadLetterCounts(ctx context.Context, js jetstream.JetStream, since time.Time) (*deadLettersOut, error) {
	s, err := js.Stream(ctx, projector.DeadLetterStream)
	if err != nil {
		return nil, err
	}
	state := s.CachedInfo().State
	out := &deadLettersOut{Total: state.Msgs}
	if state.Msgs == 0 {
		return out, nil
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &since})
	if err != nil {
		return nil, err
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, err
	}
	out.Since = int(info.NumPending)
	return out, nil
}

// allIssues reads every issue row matching q, a page at a time (a store
// returns at most stores.MaxLimit per call), newest first.
func allIssues(ctx context.Context, st stores.Store, q stores.IssueQuery) ([]stores.Issue, error) {
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

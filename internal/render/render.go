// Package render turns audit rows into the text the commands print for
// people, so the runner's changeLog and the operator's listings agree on
// what a row says.
package render

import (
	"fmt"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
)

// TimeLayout is how tables show times (always UTC).
const TimeLayout = "2006-01-02 15:04:05.000"

// Dash shows an empty value as "-".
func Dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Clip keeps the first line of s, at most n bytes of it.
func Clip(s string, n int) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			s = s[:i]
			break
		}
	}
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}

// Row is what a table shows of one changeLog row.
type Row struct {
	// State is the state the row stores (what a state filter matched),
	// marked when nothing vouches for the event (stores.Record.Mark):
	// (UNTRUSTED) for a signature the trust list does not accept,
	// (UNSIGNED) for an event without one. An event out of its
	// chain stores OUT_OF_CHAIN.
	State    string
	Time     string // UTC
	Duration string // "-" for events that have none
	By       string // the runner, or "operator NAME" for a manual resolution
	Detail   string // the error, or the operator's reason
}

// RowOf derives the shown fields of r, clipping the detail to width.
func RowOf(r stores.Record, width int) Row {
	row := Row{State: string(r.Shown()), Time: r.OccurredAt.UTC().Format(TimeLayout), Duration: "-", By: r.RunnerID, Detail: r.ErrorMessage}
	if m := r.Mark(); m != "" {
		row.State += " (" + m + ")"
	}
	if r.Type != events.ExecutionStarted && r.Type != events.ManuallyResolved {
		row.Duration = r.Duration.String()
	}
	if r.Operator != "" {
		row.By, row.Detail = "operator "+r.Operator, r.Reason
	}
	if r.LockToken > 0 && row.By != "" {
		// The fencing token tells holders apart when executions overlap.
		row.By += fmt.Sprintf(" (token %d)", r.LockToken)
	}
	if r.Chain != "" {
		row.Detail = string(r.Type) + ": " + r.Chain // what it claims, and why it is not believed
	}
	row.By, row.Detail = Dash(row.By), Dash(Clip(row.Detail, width))
	return row
}

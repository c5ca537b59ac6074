package bundle

import (
	"bytes"
	"html/template"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/auditflow/auditflow/events"
)

// The report's bounds: it is for people, and a history of a million
// events is not read line by line. Every event is in events.ndjson; the
// report says what it leaves out.
const (
	timelineChanges  = 1000 // changes with a timeline, the first by first sequence
	timelineFirst    = 5    // a timeline's first events
	timelineLast     = 20   // and its last
	timelineProblems = 20   // and those in between with a problem
	maxResolutions   = 1000 // manual resolutions listed
	maxText          = 300  // characters of a message or reason shown
)

type row struct {
	Seq                       uint64
	Time, Type, State, Who    string
	Message, Context, Problem string
}

type resolution struct {
	Subject, Time, Operator, Resolution, Reason string
	Seq                                         uint64
}

// reportChange is what the report keeps of one change.
type reportChange struct {
	subject  string
	state    string
	timeline bool
	first    []row // the first timelineFirst rows
	middle   []row // rows with a problem between first and last
	last     []row // the last timelineLast rows
	omitted  int   // rows of a timeline not kept
}

// reporter gathers report.html's content from the lines, in order, in
// memory bounded by the number of changes.
type reporter struct {
	at          map[string]*reportChange
	order       []*reportChange
	resolutions []resolution
	unlisted    int // resolutions past maxResolutions
}

func (r *reporter) add(l Line, j *judged) {
	c := r.at[l.Subject]
	if c == nil {
		if r.at == nil {
			r.at = map[string]*reportChange{}
		}
		c = &reportChange{subject: l.Subject, timeline: len(r.order) < timelineChanges}
		r.at[l.Subject] = c
		r.order = append(r.order, c)
	}
	if j.decodeErr == nil {
		c.state = string(j.event.State())
		if e := j.event; e.Type == events.ManuallyResolved {
			if len(r.resolutions) < maxResolutions {
				r.resolutions = append(r.resolutions, resolution{Subject: l.Subject, Seq: l.Seq, Time: e.OccurredAt.UTC().Format(time.RFC3339Nano),
					Operator: strings.Clone(e.Operator), Resolution: string(e.Resolution), Reason: clip(e.Reason)})
			} else {
				r.unlisted++
			}
		}
	}
	if !c.timeline {
		return
	}
	w := newRow(l, j)
	switch {
	case len(c.first) < timelineFirst:
		c.first = append(c.first, w)
		return
	case len(c.last) < timelineLast:
		c.last = append(c.last, w)
		return
	}
	if out := c.last[0]; out.Problem != "" && len(c.middle) < timelineProblems {
		c.middle = append(c.middle, out)
	} else {
		c.omitted++
	}
	c.last = append(c.last[1:], w)
}

func newRow(l Line, j *judged) row {
	r := row{Seq: l.Seq}
	if l.Context {
		r.Context = "context"
	}
	switch {
	case j.decodeErr != nil:
		r.Problem = clip("not an event of this change: " + j.decodeErr.Error())
	case j.chainErr != nil:
		r.Problem = clip("broken chain: " + j.chainErr.Error())
	}
	if j.decodeErr == nil {
		e := j.event
		r.Time, r.Type, r.State = e.OccurredAt.UTC().Format(time.RFC3339Nano), string(e.Type), string(e.State())
		r.Who = e.RunnerID
		if e.Host != "" {
			r.Who += "@" + e.Host
		}
		r.Message = clip(e.ErrorMessage)
		if e.Type == events.ManuallyResolved {
			r.Who, r.Message = e.Operator, clip(string(e.Resolution)+": "+e.Reason)
		}
		// Copies: a decoded event's strings share one allocation with all
		// of its text, which a kept row would keep alive.
		r.Type, r.Who = strings.Clone(r.Type), strings.Clone(r.Who)
	}
	return r
}

// clip shortens s to maxText characters, in a string of its own.
func clip(s string) string {
	if utf8.RuneCountInString(s) <= maxText {
		return strings.Clone(s)
	}
	return string([]rune(s)[:maxText]) + "…"
}

// render is report.html: one page for people, a function of the events
// and the manifest alone, so that a checker regenerates it and compares
// bytes. It has no script and loads nothing; html/template escapes every
// value the events carry.
func (r *reporter) render(m Manifest) ([]byte, error) {
	type change struct {
		Change
		Rows     []row
		Omitted  int
		Timeline bool
		State    string
	}
	var changes, issues []*change
	at := map[string]*change{}
	for _, c := range m.Changes {
		cc := &change{Change: c}
		changes = append(changes, cc)
		at[c.Subject] = cc
	}
	for _, rc := range r.order {
		c := at[rc.subject]
		if c == nil {
			c = &change{Change: Change{Subject: rc.subject}}
			changes = append(changes, c)
		}
		c.State, c.Timeline, c.Omitted = rc.state, rc.timeline, rc.omitted
		c.Rows = append(append(append(c.Rows, rc.first...), rc.middle...), rc.last...)
	}
	for _, c := range changes {
		switch events.State(c.State) {
		case events.StateApplied, events.StateManuallyApplied, events.StateManuallyRolledBack, events.StateRolledBack:
		default:
			issues = append(issues, c)
		}
	}
	var buf bytes.Buffer
	err := reportPage.Execute(&buf, map[string]any{"M": m, "Changes": changes, "Issues": issues,
		"Resolutions": r.resolutions, "UnlistedResolutions": r.unlisted, "TimelineChanges": timelineChanges, "TimelineFirst": timelineFirst, "TimelineLast": timelineLast,
		"ExportedAt": m.ExportedAt.UTC().Format(time.RFC3339)})
	return buf.Bytes(), err
}

var reportPage = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>auditflow audit bundle: {{.M.Stream}} sequences {{.M.FirstSeq}}–{{.M.LastSeq}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
.context{color:#888}.problem{color:#b00020;font-weight:bold}
</style>
</head>
<body>
<h1>Audit bundle: stream {{.M.Stream}}</h1>
<p>Sequences {{.M.FirstSeq}} to {{.M.LastSeq}}, {{.M.Events}} events of {{len .M.Changes}} changes, exported {{.ExportedAt}}
by {{if .M.Exporter.Name}}{{.M.Exporter.Name}} ({{.M.Exporter.Key}}){{else}}{{.M.Exporter.Key}}{{end}}.</p>
<p>Filters: pipeline {{or .M.Filters.Pipeline "any"}}, change {{or .M.Filters.Change "any"}}, since {{or .M.Filters.Since "the start"}}, until {{or .M.Filters.Until "the end"}}.
Events before the window are shown as context: each change is exported from its first event.</p>

<h2>Verification at export</h2>
<table>
<tr><th>chain breaks</th><td>{{.M.Verify.ChainBreaks}}</td></tr>
<tr><th>untrusted events</th><td>{{.M.Verify.Untrusted}}</td></tr>
<tr><th>undecodable messages</th><td>{{.M.Verify.Undecodable}}</td></tr>
<tr><th>events.ndjson</th><td>{{.M.EventsSHA256}}</td></tr>
<tr><th>trust.yaml</th><td>{{.M.TrustSHA256}}</td></tr>
</table>
<p>Check it again offline: <code>auditflow verify-bundle FILE --trust YOUR-TRUST-LIST</code>.</p>

<h2>Issues</h2>
{{if .Issues}}<ul>{{range .Issues}}<li><a href="#{{.Subject}}">{{.Pipeline}}/{{.ChangeID}}</a>: {{or .State "no readable event"}}</li>{{end}}</ul>
{{else}}<p>No change ends in a failed or uncertain state.</p>{{end}}

<h2>Resolutions</h2>
{{if .Resolutions}}<table><tr><th>seq</th><th>change</th><th>time</th><th>operator</th><th>resolution</th><th>reason</th></tr>
{{range .Resolutions}}<tr><td>{{.Seq}}</td><td>{{.Subject}}</td><td>{{.Time}}</td><td>{{.Operator}}</td><td>{{.Resolution}}</td><td>{{.Reason}}</td></tr>
{{end}}</table>
{{if .UnlistedResolutions}}<p>And {{.UnlistedResolutions}} more, not listed here: they are in events.ndjson.</p>{{end}}
{{else}}<p>No manual resolutions.</p>{{end}}

<h2>Timeline per change</h2>
<p>Each change's first {{.TimelineFirst}} and last {{.TimelineLast}} events, and those in between with a problem; the first {{.TimelineChanges}} changes only.
Every event is in events.ndjson, which verify-bundle checks whole.</p>
{{range .Changes}}<h3 id="{{.Subject}}">{{.Pipeline}}/{{.ChangeID}}</h3>
<p>{{.Events}} events ({{.Context}} context), sequences {{.FirstSeq}} to {{.LastSeq}}, head {{.Head}}</p>
{{if .Timeline}}<table><tr><th>seq</th><th>time</th><th>type</th><th>state</th><th>by</th><th>message</th><th></th></tr>
{{range .Rows}}<tr{{if .Context}} class="context"{{end}}><td>{{.Seq}}</td><td>{{.Time}}</td><td>{{.Type}}</td><td>{{.State}}</td><td>{{.Who}}</td><td>{{.Message}}</td><td>{{.Context}}{{if .Problem}} <span class="problem">{{.Problem}}</span>{{end}}</td></tr>
{{end}}</table>
{{if .Omitted}}<p>{{.Omitted}} events of this change not shown.</p>{{end}}
{{else}}<p>Timeline not shown (past the first {{$.TimelineChanges}} changes); state {{or .State "no readable event"}}.</p>
{{end}}{{end}}</body>
</html>
`))

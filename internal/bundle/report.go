package bundle

import (
	"bytes"
	"html/template"
	"time"

	"github.com/auditflow/auditflow/events"
)

// Render is report.html: one page for people, a function of the events
// and the manifest alone, so that a checker regenerates it and compares
// bytes. It has no script and loads nothing; html/template escapes every
// value the events carry.
func Render(lines []Line, m Manifest) ([]byte, error) {
	type row struct {
		Seq                       uint64
		Time, Type, State, Who    string
		Message, Context, Problem string
	}
	type change struct {
		Change
		Rows  []row
		State string
		Issue bool
	}
	type resolution struct {
		Subject, Time, Operator, Resolution, Reason string
		Seq                                         uint64
	}
	var changes []*change
	at := map[string]*change{}
	for _, c := range m.Changes {
		cc := &change{Change: c}
		changes = append(changes, cc)
		at[c.Subject] = cc
	}
	var resolutions []resolution
	for i, j := range judge(lines, nil, m.SubjectPrefix) {
		l := lines[i]
		c := at[l.Subject]
		if c == nil {
			c = &change{Change: Change{Subject: l.Subject}}
			changes = append(changes, c)
			at[l.Subject] = c
		}
		r := row{Seq: l.Seq}
		if l.Context {
			r.Context = "context"
		}
		switch {
		case j.decodeErr != nil:
			r.Problem = "not an event of this change: " + j.decodeErr.Error()
		case j.chainErr != nil:
			r.Problem = "broken chain: " + j.chainErr.Error()
		}
		if j.decodeErr == nil {
			e := j.event
			r.Time, r.Type, r.State = e.OccurredAt.UTC().Format(time.RFC3339Nano), string(e.Type), string(e.State())
			r.Who = e.RunnerID
			if e.Host != "" {
				r.Who += "@" + e.Host
			}
			r.Message = e.ErrorMessage
			if e.Type == events.ManuallyResolved {
				r.Who, r.Message = e.Operator, string(e.Resolution)+": "+e.Reason
				resolutions = append(resolutions, resolution{Subject: l.Subject, Seq: l.Seq, Time: r.Time, Operator: e.Operator, Resolution: string(e.Resolution), Reason: e.Reason})
			}
			c.State = r.State
		}
		c.Rows = append(c.Rows, r)
	}
	var issues []*change
	for _, c := range changes {
		switch events.State(c.State) {
		case events.StateApplied, events.StateManuallyApplied, events.StateManuallyRolledBack, events.StateRolledBack:
		default:
			c.Issue = true
			issues = append(issues, c)
		}
	}
	var buf bytes.Buffer
	err := reportPage.Execute(&buf, map[string]any{"M": m, "Changes": changes, "Issues": issues, "Resolutions": resolutions,
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
{{else}}<p>No manual resolutions.</p>{{end}}

<h2>Timeline per change</h2>
{{range .Changes}}<h3 id="{{.Subject}}">{{.Pipeline}}/{{.ChangeID}}</h3>
<p>{{.Events}} events ({{.Context}} context), sequences {{.FirstSeq}} to {{.LastSeq}}, head {{.Head}}</p>
<table><tr><th>seq</th><th>time</th><th>type</th><th>state</th><th>by</th><th>message</th><th></th></tr>
{{range .Rows}}<tr{{if .Context}} class="context"{{end}}><td>{{.Seq}}</td><td>{{.Time}}</td><td>{{.Type}}</td><td>{{.State}}</td><td>{{.Who}}</td><td>{{.Message}}</td><td>{{.Context}}{{if .Problem}} <span class="problem">{{.Problem}}</span>{{end}}</td></tr>
{{end}}</table>
{{end}}</body>
</html>
`))

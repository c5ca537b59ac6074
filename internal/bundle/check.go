package bundle

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/trust"
)

// judged is one line as a reader of the stream sees it.
type judged struct {
	hash      string
	event     events.Event
	decodeErr error
	chainErr  error // nil, or how it fails to extend its change's chain
	verdict   trust.Verdict
}

// judge decodes each line and checks its chain link (against the line
// before it on its subject in the bundle: none for the first) and its
// signature.
func judge(lines []Line, list *trust.List, prefix string) []judged {
	out := make([]judged, len(lines))
	prev := map[string]events.Prev{}
	for i, l := range lines {
		j := &out[i]
		j.hash = events.Hash(l.Data)
		j.event, j.decodeErr = events.Decode(l.Data)
		if j.decodeErr == nil && prefix != "" {
			j.decodeErr = events.CheckSubject(prefix, l.Subject, j.event)
		}
		if j.decodeErr == nil {
			j.chainErr = events.CheckChain(j.event, prev[l.Subject])
		}
		prev[l.Subject] = events.PrevOf(l.Seq, j.hash, j.event, j.decodeErr)
		_, _, j.verdict = list.CheckHeader(header(l.Headers), trust.Signed{
			Pipeline: j.event.Pipeline, Type: j.event.Type, Seq: l.Seq, Hash: j.hash})
	}
	return out
}

// header is the signature header's value, "" if none.
func header(h map[string][]string) string {
	for k, v := range h {
		if strings.EqualFold(k, trust.Header) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// Problem is one thing wrong with a bundle: in a file, at an event (Seq
// and Subject, when it is about one), what is wrong.
type Problem struct {
	File    string `json:"file"`
	Seq     uint64 `json:"seq,omitempty"`
	Subject string `json:"subject,omitempty"`
	Problem string `json:"problem"`
}

func (p Problem) String() string {
	if p.Seq != 0 {
		return fmt.Sprintf("%s: sequence %d (%s): %s", p.File, p.Seq, p.Subject, p.Problem)
	}
	return p.File + ": " + p.Problem
}

// Result is Check's verdict.
type Result struct {
	Events   int       `json:"events"`
	Changes  int       `json:"changes"`
	Signer   string    `json:"manifestSigner,omitempty"`
	Problems []Problem `json:"problems"`
}

// Check checks a bundle against list (the bundle's own trust.yaml if
// nil): each event's signature and chain link, the manifest's signature
// (by an operator key of list), digests and counts, and the report.
func Check(b *Bundle, list *trust.List) Result {
	res := Result{Events: len(b.Lines), Problems: []Problem{}}
	add := func(file string, seq uint64, subject, format string, args ...any) {
		res.Problems = append(res.Problems, Problem{File: file, Seq: seq, Subject: subject, Problem: fmt.Sprintf(format, args...)})
	}
	for _, n := range b.Missing {
		add(n, 0, "", "missing from the bundle")
	}
	if list == nil {
		l, err := trust.ParseList(b.Trust)
		if err != nil {
			add(TrustFile, 0, "", "not a trust list: %v", err)
		}
		list = l
	}
	m, merr := b.ParseManifest()
	if merr != nil {
		add(ManifestFile, 0, "", "not a manifest: %v", merr)
	}
	signer, err := list.CheckManifest(strings.TrimSpace(string(b.Sig)), b.Manifest)
	res.Signer = signer
	if err != nil {
		add(SigFile, 0, "", "the manifest's signature is not trusted: %s", strings.TrimPrefix(err.Error(), "trust: "))
	}

	for _, j := range zip(b.Lines, judge(b.Lines, list, m.SubjectPrefix)) {
		l := j.line
		switch {
		case j.decodeErr != nil:
			add(EventsFile, l.Seq, l.Subject, "not an event of its change: %v", j.decodeErr)
		case j.chainErr != nil:
			add(EventsFile, l.Seq, l.Subject, "broken chain: %v", j.chainErr)
		}
		if !j.verdict.Trusted() {
			add(EventsFile, l.Seq, l.Subject, "untrusted: %s", j.verdict.Problem)
		}
	}
	for i := 1; i < len(b.Lines); i++ {
		if b.Lines[i].Seq <= b.Lines[i-1].Seq {
			add(EventsFile, b.Lines[i].Seq, b.Lines[i].Subject, "out of sequence order (after %d)", b.Lines[i-1].Seq)
		}
	}
	have := summarize(b.Lines)
	res.Changes = len(have)
	if merr != nil {
		return res
	}
	if m.Format != Format {
		add(ManifestFile, 0, "", "format %q, want %q", m.Format, Format)
	}
	if h := events.Hash(b.Events); m.EventsSHA256 != h {
		add(EventsFile, 0, "", "its digest %s is not the manifest's %s: the events were edited", h, m.EventsSHA256)
	}
	if h := events.Hash(b.Trust); m.TrustSHA256 != h {
		add(TrustFile, 0, "", "its digest %s is not the manifest's %s: not the trust list the bundle was exported with", h, m.TrustSHA256)
	}
	if m.Events != len(b.Lines) {
		add(EventsFile, 0, "", "%d events, the manifest counts %d", len(b.Lines), m.Events)
	}
	if len(b.Lines) > 0 && (m.FirstSeq != b.Lines[0].Seq || m.LastSeq != b.Lines[len(b.Lines)-1].Seq) {
		add(EventsFile, 0, "", "sequences %d to %d, the manifest says %d to %d", b.Lines[0].Seq, b.Lines[len(b.Lines)-1].Seq, m.FirstSeq, m.LastSeq)
	}
	byS := map[string]Change{}
	for _, c := range have {
		byS[c.Subject] = c
	}
	for _, want := range m.Changes {
		got, ok := byS[want.Subject]
		delete(byS, want.Subject)
		switch {
		case !ok:
			add(EventsFile, 0, want.Subject, "change %s: none of its %d events (sequences %d to %d) is in the bundle", want.Subject, want.Events, want.FirstSeq, want.LastSeq)
		case got.Events != want.Events || got.Context != want.Context:
			add(EventsFile, 0, want.Subject, "change %s: %d events (%d context), the manifest counts %d (%d context): events missing or added", want.Subject, got.Events, got.Context, want.Events, want.Context)
		case got.FirstSeq != want.FirstSeq || got.LastSeq != want.LastSeq || got.Head != want.Head:
			add(EventsFile, 0, want.Subject, "change %s: sequences %d to %d with head %s, the manifest says %d to %d with head %s", want.Subject, got.FirstSeq, got.LastSeq, got.Head, want.FirstSeq, want.LastSeq, want.Head)
		}
	}
	for s := range byS {
		add(EventsFile, 0, s, "change %s is not in the manifest", s)
	}
	report, err := Render(b.Lines, m)
	switch {
	case err != nil:
		add(ReportFile, 0, "", "cannot be regenerated: %v", err)
	case !bytes.Equal(report, b.Report):
		add(ReportFile, 0, "", "does not match the report regenerated from %s and %s (at byte %d): it was edited", EventsFile, ManifestFile, firstDiff(report, b.Report))
	}
	return res
}

type lineJudged struct {
	line Line
	judged
}

func zip(lines []Line, js []judged) []lineJudged {
	out := make([]lineJudged, len(lines))
	for i := range lines {
		out[i] = lineJudged{lines[i], js[i]}
	}
	return out
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

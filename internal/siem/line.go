package siem

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"sort"
	"strconv"
	"strings"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/trust"
)

// Trust verdicts besides the list's problems.
const (
	verdictTrusted   = "trusted"
	verdictUnchecked = "unchecked" // no trust list
)

// UndecodableType is the CloudEvents type of a message that does not
// decode as an event.
const UndecodableType = events.TypePrefix + "undecodable"

// judged is what one message is, apart from its chain.
type judged struct {
	event  events.Event
	err    error // why it does not decode
	self   events.Prev
	signer string
	trust  string
}

// judge decodes m and checks its signature.
func judge(list *trust.List, m *msg) judged {
	e, err := events.Decode(m.data)
	hash := events.Hash(m.data)
	j := judged{event: e, err: err, self: events.PrevOf(m.seq, hash, e, err), trust: verdictUnchecked}
	header := m.header.Get(trust.Header)
	if err != nil || list == nil {
		// Without a list, or without an event to scope the key to, the
		// signature is not judged; a well-formed header still names its
		// signer.
		j.signer, _, _ = trust.ParseHeader(header)
		if header == "" {
			j.signer = ""
		}
		return j
	}
	signer, _, v := list.CheckHeader(header, trust.Signed{Pipeline: e.Pipeline, Type: e.Type, Seq: m.seq, Hash: hash})
	j.signer, j.trust = signer, verdictTrusted
	if !v.Trusted() {
		j.trust = v.Problem
	}
	return j
}

// chainProblem is how e fails to extend its chain after prev, worded as
// the stores keep it ("" if it does not).
func chainProblem(e events.Event, prev events.Prev) string { return stores.ChainOf(e, prev) }

// chains remembers each subject's newest message over a run of messages
// read in stream order without a gap (as the projector's chainTracker).
type chains struct {
	fromStart bool // the run began at the stream's first message
	last      map[string]events.Prev
}

// maxTracked bounds the subjects remembered: past it they are forgotten
// and asked of the stream when they come back.
const maxTracked = 200_000

// reset begins a new run.
func (c *chains) reset(fromStart bool) {
	c.fromStart, c.last = fromStart, map[string]events.Prev{}
}

// next records self as subject's newest message and returns the one
// before it, if the run knows it.
func (c *chains) next(subject string, self events.Prev) (events.Prev, bool) {
	if c.last == nil || len(c.last) >= maxTracked {
		c.reset(false)
	}
	prev, seen := c.last[subject]
	c.last[subject] = self
	if seen {
		return prev, true
	}
	return events.Prev{}, c.fromStart
}

// extensionPrefix starts the names of the attributes the feed adds; an
// event's own attributes of that name are dropped, so that no event can
// speak for the feed.
const extensionPrefix = `"auditflow`

// appendLine appends m's line to b.
func appendLine(b []byte, stream string, m *msg, j *judged, chain string) []byte {
	if j.err != nil {
		return appendUndecodable(b, stream, m, j)
	}
	doc := bytes.TrimSpace(m.data)
	if bytes.IndexByte(doc, '\n') >= 0 || bytes.IndexByte(doc, '\r') >= 0 || bytes.Contains(doc, []byte(extensionPrefix)) {
		doc = normalize(doc)
	}
	b = append(b, doc[:len(doc)-1]...) // without its closing brace
	b = appendExtensions(b, m.seq, j, chain)
	return append(b, "}\n"...)
}

// normalize is doc on one line without attributes named auditflow*. Its
// attributes come out sorted: it is only for such rare documents.
func normalize(doc []byte) []byte {
	var attrs map[string]json.RawMessage
	if err := json.Unmarshal(doc, &attrs); err != nil {
		var out bytes.Buffer
		_ = json.Compact(&out, doc) // it decoded as an event: valid JSON
		return out.Bytes()
	}
	names := make([]string, 0, len(attrs))
	for k := range attrs {
		if !strings.HasPrefix(k, extensionPrefix[1:]) {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	out := []byte{'{'}
	for i, k := range names {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendString(out, k)
		out = append(out, ':')
		var v bytes.Buffer
		_ = json.Compact(&v, attrs[k])
		out = append(out, v.Bytes()...)
	}
	return append(out, '}')
}

func appendExtensions(b []byte, seq uint64, j *judged, chain string) []byte {
	b = append(b, `,"auditflowseq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"auditflowsigner":`...)
	b = appendString(b, j.signer)
	b = append(b, `,"auditflowtrust":`...)
	b = appendString(b, j.trust)
	b = append(b, `,"auditflowchain":`...)
	return appendString(b, chain)
}

// appendUndecodable appends the line of a message that is no event: a
// CloudEvents document of its own with the raw bytes and the reason.
func appendUndecodable(b []byte, stream string, m *msg, j *judged) []byte {
	b = append(b, `{"specversion":"1.0","id":`...)
	b = appendString(b, "auditflow-undecodable-"+stream+"-"+strconv.FormatUint(m.seq, 10))
	b = append(b, `,"source":`...)
	b = appendString(b, "urn:auditflow:stream:"+stream)
	b = append(b, `,"type":"`+UndecodableType+`","subject":`...)
	b = appendString(b, m.subject)
	b = append(b, `,"datacontenttype":"application/octet-stream","data_base64":"`...)
	b = base64.StdEncoding.AppendEncode(b, m.data)
	b = append(b, '"')
	b = appendExtensions(b, m.seq, j, "")
	b = append(b, `,"auditflowerror":`...)
	b = appendString(b, j.err.Error())
	return append(b, "}\n"...)
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

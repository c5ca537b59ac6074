package bundle

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/trust"
)

// Files of a bundle.
const (
	EventsFile   = "events.ndjson"
	TrustFile    = "trust.yaml"
	ManifestFile = "manifest.json"
	SigFile      = "manifest.sig"
	ReportFile   = "report.html"
)

// Format names this version of the bundle format in the manifest.
const Format = "auditflow-bundle-v1"

// ErrInvalid: the file is not a bundle (not a gzip tar, a member too
// large, a line that is not JSON).
var ErrInvalid = errors.New("bundle: invalid")

// maxMember bounds what Read takes of one member.
const maxMember = 1 << 30

// Line is one stream message, a line of events.ndjson. Data is the
// message's exact bytes (base64 in JSON); Context marks an event before
// the export's window, included so that its change's chain is whole.
type Line struct {
	Seq     uint64              `json:"seq"`
	Subject string              `json:"subject"`
	Headers map[string][]string `json:"headers"`
	Data    []byte              `json:"data"`
	Context bool                `json:"context"`
}

// Filters are what the export was asked for, as given.
type Filters struct {
	Pipeline string `json:"pipeline,omitempty"`
	Change   string `json:"change,omitempty"`
	Since    string `json:"since,omitempty"`
	Until    string `json:"until,omitempty"`
}

// Change sums up one change's events in the bundle.
type Change struct {
	Subject  string `json:"subject"`
	Pipeline string `json:"pipeline"`
	ChangeID string `json:"changeId"`
	Events   int    `json:"events"`
	Context  int    `json:"context"`
	FirstSeq uint64 `json:"firstSeq"`
	LastSeq  uint64 `json:"lastSeq"`
	// Head is events.Hash of the change's last message in the bundle.
	Head string `json:"head"`
}

// Summary is what the exporter's own check found.
type Summary struct {
	ChainBreaks int `json:"chainBreaks"`
	Untrusted   int `json:"untrusted"`
	Undecodable int `json:"undecodable"`
}

// Exporter is who signed the manifest.
type Exporter struct {
	Key  string `json:"key"`
	Name string `json:"name,omitempty"`
}

// Manifest describes a bundle; manifest.sig signs its exact bytes.
type Manifest struct {
	Format        string    `json:"format"`
	Stream        string    `json:"stream"`
	SubjectPrefix string    `json:"subjectPrefix"`
	Filters       Filters   `json:"filters"`
	FirstSeq      uint64    `json:"firstSeq"`
	LastSeq       uint64    `json:"lastSeq"`
	Events        int       `json:"events"`
	EventsSHA256  string    `json:"eventsSha256"` // events.Hash of events.ndjson
	TrustSHA256   string    `json:"trustSha256"`  // events.Hash of trust.yaml
	Changes       []Change  `json:"changes"`
	Verify        Summary   `json:"verify"`
	Exporter      Exporter  `json:"exporter"`
	ExportedAt    time.Time `json:"exportedAt"`
}

// Bundle is a bundle's files.
type Bundle struct {
	Lines    []Line
	Events   []byte // events.ndjson as stored
	Trust    []byte
	Manifest []byte
	Sig      []byte
	Report   []byte
	Missing  []string // members absent when read
}

// Build makes a bundle of lines (in sequence order) judged with list and
// signed by signer. m gives the stream, filters and time; Build fills in
// the rest.
func Build(lines []Line, list *trust.List, signer *trust.Signer, m Manifest) (*Bundle, error) {
	if list == nil || signer == nil {
		return nil, errors.New("bundle: a trust list and a signing key are needed")
	}
	var ev bytes.Buffer
	for _, l := range lines {
		b, err := json.Marshal(l)
		if err != nil {
			return nil, err
		}
		ev.Write(b)
		ev.WriteByte('\n')
	}
	tl, err := list.Marshal()
	if err != nil {
		return nil, err
	}
	m.Format = Format
	m.Events = len(lines)
	m.EventsSHA256 = events.Hash(ev.Bytes())
	m.TrustSHA256 = events.Hash(tl)
	m.Changes = summarize(lines)
	if len(lines) > 0 {
		m.FirstSeq, m.LastSeq = lines[0].Seq, lines[len(lines)-1].Seq
	}
	for _, j := range judge(lines, list, m.SubjectPrefix) {
		switch {
		case j.decodeErr != nil:
			m.Verify.Undecodable++
		case j.chainErr != nil:
			m.Verify.ChainBreaks++
		}
		if !j.verdict.Trusted() {
			m.Verify.Untrusted++
		}
	}
	m.Exporter = Exporter{Key: signer.PublicKey()}
	if k, ok := list.Lookup(signer.PublicKey()); ok {
		m.Exporter.Name = k.Name
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	mb = append(mb, '\n')
	report, err := Render(lines, m)
	if err != nil {
		return nil, err
	}
	return &Bundle{Lines: lines, Events: ev.Bytes(), Trust: tl, Manifest: mb,
		Sig: []byte(signer.SignManifest(mb) + "\n"), Report: report}, nil
}

// summarize counts each change's lines, in order of first appearance.
func summarize(lines []Line) []Change {
	var out []Change
	at := map[string]int{}
	for _, l := range lines {
		i, ok := at[l.Subject]
		if !ok {
			i = len(out)
			at[l.Subject] = i
			c := Change{Subject: l.Subject, FirstSeq: l.Seq}
			if p := strings.SplitN(l.Subject, ".", 4); len(p) == 4 {
				c.Pipeline, _ = events.DecodeToken(p[2])
				c.ChangeID, _ = events.DecodeToken(p[3])
			}
			out = append(out, c)
		}
		c := &out[i]
		c.Events++
		if l.Context {
			c.Context++
		}
		c.LastSeq, c.Head = l.Seq, events.Hash(l.Data)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].FirstSeq < out[j].FirstSeq })
	return out
}

// WriteTo writes the bundle as a gzip-compressed tar.
func (b *Bundle) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	zw := gzip.NewWriter(cw)
	tw := tar.NewWriter(zw)
	var mod time.Time
	if m, err := b.ParseManifest(); err == nil {
		mod = m.ExportedAt
	}
	for _, f := range []struct {
		name string
		b    []byte
	}{{ManifestFile, b.Manifest}, {SigFile, b.Sig}, {EventsFile, b.Events}, {TrustFile, b.Trust}, {ReportFile, b.Report}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.b)), ModTime: mod, Format: tar.FormatPAX}); err != nil {
			return cw.n, err
		}
		if _, err := tw.Write(f.b); err != nil {
			return cw.n, err
		}
	}
	if err := tw.Close(); err != nil {
		return cw.n, err
	}
	err := zw.Close()
	return cw.n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Read reads a bundle. A member that is absent is listed in Missing, for
// Check to report; what is not a bundle at all is an error wrapping
// ErrInvalid.
func Read(r io.Reader) (*Bundle, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("%w: not gzip: %v", ErrInvalid, err)
	}
	tr := tar.NewReader(zr)
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%w: not a tar: %v", ErrInvalid, err)
		}
		if _, dup := files[h.Name]; dup {
			return nil, fmt.Errorf("%w: %s twice", ErrInvalid, h.Name)
		}
		b, err := io.ReadAll(io.LimitReader(tr, maxMember+1))
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, h.Name, err)
		}
		if len(b) > maxMember {
			return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalid, h.Name, maxMember)
		}
		files[h.Name] = b
	}
	b := &Bundle{Events: files[EventsFile], Trust: files[TrustFile], Manifest: files[ManifestFile], Sig: files[SigFile], Report: files[ReportFile]}
	for _, n := range []string{ManifestFile, SigFile, EventsFile, TrustFile, ReportFile} {
		if _, ok := files[n]; !ok {
			b.Missing = append(b.Missing, n)
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(b.Events))
	sc.Buffer(nil, 64<<20)
	for n := 1; sc.Scan(); n++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var l Line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %v", ErrInvalid, EventsFile, n, err)
		}
		b.Lines = append(b.Lines, l)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, EventsFile, err)
	}
	return b, nil
}

// ParseManifest decodes the manifest.
func (b *Bundle) ParseManifest() (Manifest, error) {
	var m Manifest
	err := json.Unmarshal(b.Manifest, &m)
	return m, err
}

package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
	"sync"
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
// large or twice).
var ErrInvalid = errors.New("bundle: invalid")

// maxMember bounds what is held in memory of one member other than
// events.ndjson, which is read as a stream.
const maxMember = 256 << 20

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

// Writer writes a bundle of stream messages handed to it in sequence
// order, in one pass and in memory bounded by the number of changes, not
// of events: events.ndjson goes, compressed, to a spool file next to the
// bundle until the manifest, which names its digest, can be written.
type Writer struct {
	list   *trust.List
	signer *trust.Signer
	m      Manifest
	judge  judger
	sum    summary
	rep    reporter
	spool  *os.File // events.ndjson as gzip members, one per range of a batch
	size   int64    // its uncompressed bytes
	digest hash.Hash
	err    error
}

// NewWriter starts a bundle judged with list and signed by signer,
// spooling in dir. m gives the stream, subject prefix, filters and time;
// Finish fills in the rest. Close removes the spool.
func NewWriter(dir string, list *trust.List, signer *trust.Signer, m Manifest) (*Writer, error) {
	if list == nil || signer == nil {
		return nil, errors.New("bundle: a trust list and a signing key are needed")
	}
	f, err := os.CreateTemp(dir, ".bundle-events-*")
	if err != nil {
		return nil, fmt.Errorf("bundle: spool file: %w", err)
	}
	return &Writer{list: list, signer: signer, m: m, judge: newJudger(list, m.SubjectPrefix),
		spool: f, digest: sha256.New()}, nil
}

// Add adds lines, the next ones in sequence order. The costly part —
// signature checks, hashing, encoding, compression — runs on every CPU.
func (w *Writer) Add(lines []Line) error {
	if w.err != nil || len(lines) == 0 {
		return w.err
	}
	// Checked before anything is judged or counted, so that a refused
	// batch leaves the bundle as it was.
	prev, seen := w.m.LastSeq, w.m.Events > 0
	for _, l := range lines {
		if seen && l.Seq <= prev {
			return fmt.Errorf("bundle: sequence %d added after %d", l.Seq, prev)
		}
		prev, seen = l.Seq, true
	}
	js := make([]judged, len(lines))
	ranges := rangesFor(len(lines))
	raw := make([][]byte, ranges) // per range: its lines, encoded
	gz := make([][]byte, ranges)  // per range: the same, a gzip member
	errs := make([]error, ranges)
	inParallel(len(lines), ranges, func(k, lo, hi int) {
		var buf bytes.Buffer
		for i := lo; i < hi; i++ {
			js[i] = w.judge.one(lines[i])
			b, err := json.Marshal(lines[i])
			if err != nil {
				errs[k] = err
				return
			}
			buf.Write(b)
			buf.WriteByte('\n')
		}
		var z bytes.Buffer
		zw := gzips.Get().(*gzip.Writer)
		zw.Reset(&z)
		zw.Write(buf.Bytes())
		zw.Close()
		gzips.Put(zw)
		raw[k], gz[k] = buf.Bytes(), z.Bytes()
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bundle: encode: %w", err)
	}
	for i, l := range lines {
		j := &js[i]
		w.judge.link(l, j)
		switch {
		case j.decodeErr != nil:
			w.m.Verify.Undecodable++
		case j.chainErr != nil:
			w.m.Verify.ChainBreaks++
		}
		if !j.verdict.Trusted() {
			w.m.Verify.Untrusted++
		}
		w.sum.add(l, j.hash)
		w.rep.add(l, j)
		if w.m.Events == 0 {
			w.m.FirstSeq = l.Seq
		}
		w.m.Events++
		w.m.LastSeq = l.Seq
	}
	for k := range ranges {
		w.digest.Write(raw[k])
		w.size += int64(len(raw[k]))
		if _, err := w.spool.Write(gz[k]); err != nil {
			w.err = fmt.Errorf("bundle: spool: %w", err)
			return w.err
		}
	}
	return nil
}

// Finish finishes the bundle: it writes the gzip-compressed tar to out
// (manifest.json, manifest.sig, trust.yaml, events.ndjson, report.html)
// and returns the manifest. The gzip stream is several members: the
// spooled events are copied into it as compressed, not compressed again.
func (w *Writer) Finish(out io.Writer) (Manifest, error) {
	if w.err != nil {
		return Manifest{}, w.err
	}
	tl, err := w.list.Marshal()
	if err != nil {
		return Manifest{}, err
	}
	m := w.m
	m.Format = Format
	m.EventsSHA256 = "sha256:" + hex.EncodeToString(w.digest.Sum(nil))
	m.TrustSHA256 = events.Hash(tl)
	m.Changes = w.sum.list()
	m.Exporter = Exporter{Key: w.signer.PublicKey()}
	if k, ok := w.list.Lookup(w.signer.PublicKey()); ok {
		m.Exporter.Name = k.Name
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Manifest{}, err
	}
	mb = append(mb, '\n')
	report, err := w.rep.render(m)
	if err != nil {
		return Manifest{}, err
	}
	header := func(name string, size int64) *tar.Header {
		return &tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: m.ExportedAt, Format: tar.FormatPAX}
	}
	// Up to events.ndjson's header.
	var head bytes.Buffer
	tw := tar.NewWriter(&head)
	for _, f := range []struct {
		name string
		b    []byte
	}{{ManifestFile, mb}, {SigFile, []byte(w.signer.SignManifest(mb) + "\n")}, {TrustFile, tl}} {
		if err := tw.WriteHeader(header(f.name, int64(len(f.b)))); err != nil {
			return Manifest{}, err
		}
		tw.Write(f.b)
	}
	if err := tw.WriteHeader(header(EventsFile, w.size)); err != nil { // written at once; its content follows
		return Manifest{}, err
	}
	// After events.ndjson: its padding to a block, the report, the end.
	var tail bytes.Buffer
	tail.Write(make([]byte, (512-w.size%512)%512))
	tw = tar.NewWriter(&tail)
	if err := tw.WriteHeader(header(ReportFile, int64(len(report)))); err != nil {
		return Manifest{}, err
	}
	tw.Write(report)
	if err := tw.Close(); err != nil {
		return Manifest{}, err
	}
	if err := writeGzip(out, head.Bytes()); err != nil {
		return Manifest{}, err
	}
	if _, err := w.spool.Seek(0, io.SeekStart); err != nil {
		return Manifest{}, err
	}
	if _, err := io.Copy(out, w.spool); err != nil {
		return Manifest{}, err
	}
	return m, writeGzip(out, tail.Bytes())
}

// gzips are the writers that compress events.ndjson's batches (BestSpeed:
// a writer's state is about a megabyte, and compression would otherwise be
// the slowest step).
var gzips = sync.Pool{New: func() any {
	zw, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed)
	return zw
}}

// Close removes the spool file.
func (w *Writer) Close() error {
	w.spool.Close()
	return os.Remove(w.spool.Name())
}

// writeGzip writes b to out as one gzip member.
func writeGzip(out io.Writer, b []byte) error {
	zw := gzip.NewWriter(out)
	if _, err := zw.Write(b); err != nil {
		return err
	}
	return zw.Close()
}

// summary counts each change's lines, in order of first appearance.
type summary struct {
	at      map[string]int
	changes []Change
	ordered bool // lines came in sequence order
}

func (s *summary) add(l Line, hash string) {
	i, ok := s.at[l.Subject]
	if !ok {
		if s.at == nil {
			s.at, s.ordered = map[string]int{}, true
		}
		i = len(s.changes)
		s.at[l.Subject] = i
		c := Change{Subject: l.Subject, FirstSeq: l.Seq}
		if p := strings.SplitN(l.Subject, ".", 4); len(p) == 4 {
			c.Pipeline, _ = events.DecodeToken(p[2])
			c.ChangeID, _ = events.DecodeToken(p[3])
		}
		if n := len(s.changes); n > 0 && s.changes[n-1].FirstSeq > l.Seq {
			s.ordered = false
		}
		s.changes = append(s.changes, c)
	}
	c := &s.changes[i]
	c.Events++
	if l.Context {
		c.Context++
	}
	c.LastSeq, c.Head = l.Seq, hash
}

// list is the changes by first sequence.
func (s *summary) list() []Change {
	if !s.ordered {
		sortChanges(s.changes)
	}
	if s.changes == nil {
		return []Change{}
	}
	return s.changes
}

package bundle

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"

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

// judger judges lines in sequence order: one, safe to call concurrently,
// does what needs only the line (hash, decoding, signature); link, in
// order, checks the chain against the line before it on its subject in
// the bundle (none for the first).
type judger struct {
	list   *trust.List
	prefix string
	prev   map[string]events.Prev
}

func newJudger(list *trust.List, prefix string) judger {
	return judger{list: list, prefix: prefix, prev: map[string]events.Prev{}}
}

func (jr *judger) one(l Line) judged {
	var j judged
	j.hash = events.Hash(l.Data)
	j.event, j.decodeErr = events.Decode(l.Data)
	if j.decodeErr == nil && jr.prefix != "" {
		j.decodeErr = events.CheckSubject(jr.prefix, l.Subject, j.event)
	}
	_, _, j.verdict = jr.list.CheckHeader(header(l.Headers), trust.Signed{
		Pipeline: j.event.Pipeline, Type: j.event.Type, Seq: l.Seq, Hash: j.hash})
	return j
}

func (jr *judger) link(l Line, j *judged) {
	if j.decodeErr == nil {
		j.chainErr = events.CheckChain(j.event, jr.prev[l.Subject])
	}
	p := events.PrevOf(l.Seq, j.hash, j.event, j.decodeErr)
	p.ID = strings.Clone(p.ID) // not the whole event it was decoded from
	jr.prev[l.Subject] = p
}

// rangesFor is how many ranges inParallel splits n lines into: one per
// CPU, of 64 lines at least.
func rangesFor(n int) int {
	if n == 0 {
		return 0
	}
	return min(runtime.GOMAXPROCS(0), max(n/64, 1))
}

// inParallel calls fn(k, lo, hi) for ranges k = 0 … ranges-1 covering
// [0, n) in order, concurrently, and returns once every call has.
func inParallel(n, ranges int, fn func(k, lo, hi int)) {
	var wg sync.WaitGroup
	for k := range ranges {
		wg.Go(func() { fn(k, k*n/ranges, (k+1)*n/ranges) })
	}
	wg.Wait()
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

func sortChanges(cs []Change) {
	sort.SliceStable(cs, func(i, j int) bool { return cs[i].FirstSeq < cs[j].FirstSeq })
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

// maxEventProblems bounds the problems listed about single events; the
// rest are counted (Result.Unlisted).
const maxEventProblems = 1000

// Result is Check's verdict.
type Result struct {
	Events   int       `json:"events"`
	Changes  int       `json:"changes"`
	Signer   string    `json:"manifestSigner,omitempty"`
	Problems []Problem `json:"problems"`
	// Unlisted counts problems with single events beyond the first
	// maxEventProblems, which are not listed.
	Unlisted int `json:"unlistedProblems,omitempty"`
}

// checker is Check's state.
type checker struct {
	res     Result
	list    *trust.List // the list given, else the bundle's once read
	given   bool
	files   map[string][]byte // the members other than events.ndjson
	manif   *Manifest
	spool   *os.File // events.ndjson when it came before what checking it needs
	spooled bool
	// events.ndjson
	judge   judger
	sum     summary
	rep     reporter
	digest  string
	lastSeq uint64
	lineNo  int
}

func (c *checker) add(file string, seq uint64, subject, format string, args ...any) {
	c.res.Problems = append(c.res.Problems, Problem{File: file, Seq: seq, Subject: subject, Problem: fmt.Sprintf(format, args...)})
}

// addEvent adds a problem with one event, or counts it past the bound.
func (c *checker) addEvent(seq uint64, subject, format string, args ...any) {
	if len(c.res.Problems) >= maxEventProblems {
		c.res.Unlisted++
		return
	}
	c.add(EventsFile, seq, subject, format, args...)
}

// Check reads a bundle from r and checks it against list (the bundle's own
// trust.yaml if nil): each event's signature and chain link, the
// manifest's signature (by an operator key of the list), digests and
// counts, and the report. It reads events.ndjson as a stream, checking
// signatures on every CPU; if it comes before trust.yaml or manifest.json
// (export writes it after them), it is spooled to a file in spoolDir
// first. An error means r is not a bundle at all (ErrInvalid) or could
// not be read; everything else is a Problem.
func Check(r io.Reader, list *trust.List, spoolDir string) (Result, error) {
	c := &checker{list: list, given: list != nil, files: map[string][]byte{}, res: Result{Problems: []Problem{}}}
	defer func() {
		if c.spool != nil {
			c.spool.Close()
			os.Remove(c.spool.Name())
		}
	}()
	zr, err := gzip.NewReader(r)
	if err != nil {
		return Result{}, fmt.Errorf("%w: not gzip: %v", ErrInvalid, err)
	}
	tr := tar.NewReader(zr)
	seen := map[string]bool{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Result{}, fmt.Errorf("%w: not a tar: %v", ErrInvalid, err)
		}
		if seen[h.Name] {
			return Result{}, fmt.Errorf("%w: %s twice", ErrInvalid, h.Name)
		}
		seen[h.Name] = true
		switch h.Name {
		case EventsFile:
			if c.ready() {
				c.startEvents()
				err = c.events(tr)
			} else {
				err = c.spoolEvents(tr, spoolDir)
			}
			if err != nil {
				return Result{}, err
			}
		case ManifestFile, SigFile, TrustFile, ReportFile:
			b, err := io.ReadAll(io.LimitReader(tr, maxMember+1))
			if err != nil {
				return Result{}, fmt.Errorf("%w: %s: %v", ErrInvalid, h.Name, err)
			}
			if len(b) > maxMember {
				return Result{}, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalid, h.Name, maxMember)
			}
			c.files[h.Name] = b
			c.member(h.Name, b)
		default:
			c.add(h.Name, 0, "", "not a file of a bundle")
		}
	}
	for _, n := range []string{ManifestFile, SigFile, EventsFile, TrustFile, ReportFile} {
		if !seen[n] {
			c.add(n, 0, "", "missing from the bundle")
		}
	}
	if c.spooled {
		c.startEvents()
		if _, err := c.spool.Seek(0, io.SeekStart); err != nil {
			return Result{}, err
		}
		if err := c.events(bufio.NewReaderSize(c.spool, 1<<20)); err != nil {
			return Result{}, err
		}
	}
	c.finish()
	return c.res, nil
}

// member takes in a small member as soon as it is read.
func (c *checker) member(name string, b []byte) {
	switch name {
	case TrustFile:
		if c.given {
			return
		}
		l, err := trust.ParseList(b)
		if err != nil {
			c.add(TrustFile, 0, "", "not a trust list: %v", err)
		}
		c.list = l
	case ManifestFile:
		var m Manifest
		if err := json.Unmarshal(b, &m); err != nil {
			c.add(ManifestFile, 0, "", "not a manifest: %v", err)
			return
		}
		c.manif = &m
	}
}

// ready reports whether events.ndjson can be checked as it is read: the
// trust list and the manifest (its subject prefix) have been read.
func (c *checker) ready() bool {
	_, trustRead := c.files[TrustFile]
	_, manifRead := c.files[ManifestFile]
	return (c.given || trustRead) && manifRead
}

// startEvents sets up checking events.ndjson with what is known of the
// trust list and the manifest: everything, unless a member is missing.
func (c *checker) startEvents() {
	prefix := ""
	if c.manif != nil {
		prefix = c.manif.SubjectPrefix
	}
	c.judge = newJudger(c.list, prefix)
}

func (c *checker) spoolEvents(r io.Reader, dir string) error {
	f, err := os.CreateTemp(dir, ".verify-events-*")
	if err != nil {
		return fmt.Errorf("bundle: spool %s: %w", EventsFile, err)
	}
	c.spool, c.spooled = f, true
	if _, err := io.Copy(f, r); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalid, EventsFile, err)
	}
	return nil
}

// batchLines is how many lines of events.ndjson are checked at once.
const batchLines = 512

// events checks events.ndjson as it is read: a goroutine reads lines in
// batches while the last batch is checked.
func (c *checker) events(r io.Reader) error {
	h := sha256.New()
	sc := bufio.NewScanner(io.TeeReader(r, h))
	sc.Buffer(make([]byte, 0, 1<<20), 64<<20)
	batches := make(chan [][]byte, 1)
	var readErr error
	go func() {
		defer close(batches)
		batch := make([][]byte, 0, batchLines)
		for sc.Scan() {
			batch = append(batch, bytes.Clone(sc.Bytes()))
			if len(batch) == batchLines {
				batches <- batch
				batch = make([][]byte, 0, batchLines)
			}
		}
		readErr = sc.Err()
		batches <- batch
	}()
	for texts := range batches {
		c.checkLines(texts)
	}
	if readErr != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalid, EventsFile, readErr)
	}
	c.digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	return nil
}

// checkLines checks a batch of events.ndjson's lines: decoding and
// signatures on every CPU, then chain links, counts and the report's rows
// in order.
func (c *checker) checkLines(texts [][]byte) {
	lines := make([]Line, len(texts))
	errs := make([]error, len(texts))
	js := make([]judged, len(texts))
	inParallel(len(texts), rangesFor(len(texts)), func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			if len(bytes.TrimSpace(texts[i])) == 0 {
				continue
			}
			if errs[i] = json.Unmarshal(texts[i], &lines[i]); errs[i] == nil {
				js[i] = c.judge.one(lines[i])
			}
		}
	})
	for i, l := range lines {
		c.lineNo++
		switch {
		case len(bytes.TrimSpace(texts[i])) == 0:
			continue
		case errs[i] != nil:
			c.addEvent(0, "", "line %d: not an event line: %v", c.lineNo, errs[i])
			continue
		}
		j := &js[i]
		c.judge.link(l, j)
		switch {
		case j.decodeErr != nil:
			c.addEvent(l.Seq, l.Subject, "not an event of its change: %v", j.decodeErr)
		case j.chainErr != nil:
			c.addEvent(l.Seq, l.Subject, "broken chain: %v", j.chainErr)
		}
		if !j.verdict.Trusted() {
			c.addEvent(l.Seq, l.Subject, "untrusted: %s", j.verdict.Problem)
		}
		if c.res.Events > 0 && l.Seq <= c.lastSeq {
			c.addEvent(l.Seq, l.Subject, "out of sequence order (after %d)", c.lastSeq)
		}
		c.res.Events++
		c.lastSeq = l.Seq
		c.sum.add(l, j.hash)
		c.rep.add(l, j)
	}
}

// finish checks what needs every member: the manifest's signature,
// digests and counts, and the report.
func (c *checker) finish() {
	if c.res.Unlisted > 0 {
		c.add(EventsFile, 0, "", "%d more problems with single events, not listed", c.res.Unlisted)
	}
	have := c.sum.list()
	c.res.Changes = len(have)
	mb, sig := c.files[ManifestFile], c.files[SigFile]
	signer, err := c.list.CheckManifest(strings.TrimSpace(string(sig)), mb)
	c.res.Signer = signer
	if err != nil {
		c.add(SigFile, 0, "", "the manifest's signature is not trusted: %s", strings.TrimPrefix(err.Error(), "trust: "))
	}
	m := c.manif
	if m == nil {
		return
	}
	if m.Format != Format {
		c.add(ManifestFile, 0, "", "format %q, want %q", m.Format, Format)
	}
	if c.digest != "" && m.EventsSHA256 != c.digest {
		c.add(EventsFile, 0, "", "its digest %s is not the manifest's %s: the events were edited", c.digest, m.EventsSHA256)
	}
	if tb, ok := c.files[TrustFile]; ok {
		if h := events.Hash(tb); m.TrustSHA256 != h {
			c.add(TrustFile, 0, "", "its digest %s is not the manifest's %s: not the trust list the bundle was exported with", h, m.TrustSHA256)
		}
	}
	if m.Events != c.res.Events {
		c.add(EventsFile, 0, "", "%d events, the manifest counts %d", c.res.Events, m.Events)
	}
	if len(have) > 0 && (m.FirstSeq != have[0].FirstSeq || m.LastSeq != c.lastSeq) {
		c.add(EventsFile, 0, "", "sequences %d to %d, the manifest says %d to %d", have[0].FirstSeq, c.lastSeq, m.FirstSeq, m.LastSeq)
	}
	byS := make(map[string]Change, len(have))
	for _, ch := range have {
		byS[ch.Subject] = ch
	}
	for _, want := range m.Changes {
		got, ok := byS[want.Subject]
		delete(byS, want.Subject)
		switch {
		case !ok:
			c.add(EventsFile, 0, want.Subject, "change %s: none of its %d events (sequences %d to %d) is in the bundle", want.Subject, want.Events, want.FirstSeq, want.LastSeq)
		case got.Events != want.Events || got.Context != want.Context:
			c.add(EventsFile, 0, want.Subject, "change %s: %d events (%d context), the manifest counts %d (%d context): events missing or added", want.Subject, got.Events, got.Context, want.Events, want.Context)
		case got.FirstSeq != want.FirstSeq || got.LastSeq != want.LastSeq || got.Head != want.Head:
			c.add(EventsFile, 0, want.Subject, "change %s: sequences %d to %d with head %s, the manifest says %d to %d with head %s", want.Subject, got.FirstSeq, got.LastSeq, got.Head, want.FirstSeq, want.LastSeq, want.Head)
		}
	}
	for _, ch := range have {
		if _, extra := byS[ch.Subject]; extra {
			c.add(EventsFile, 0, ch.Subject, "change %s is not in the manifest", ch.Subject)
		}
	}
	report, err := c.rep.render(*m)
	switch {
	case err != nil:
		c.add(ReportFile, 0, "", "cannot be regenerated: %v", err)
	case !bytes.Equal(report, c.files[ReportFile]):
		c.add(ReportFile, 0, "", "does not match the report regenerated from %s and %s (at byte %d): it was edited", EventsFile, ManifestFile, firstDiff(report, c.files[ReportFile]))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

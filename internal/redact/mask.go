package redact

import (
	"bytes"
	"cmp"
	"io"
	"slices"
	"strings"
	"sync"
)

// MinLen is the shortest value a [Masker] masks.
const MinLen = 4

// Mask replaces a secret in a [Masker]'s output.
const Mask = "***"

// Masker replaces known secret values with [Mask], and, made by
// [NewOutputMasker], credentials recognisable by their form. A nil
// *Masker masks nothing. It is safe for concurrent use.
type Masker struct {
	// forms: also mask what formSpans finds.
	forms   bool
	secrets []string // longest first
	// byPair indexes secrets by their first two bytes, and pairs is the
	// set of those pairs: a scan looks up each position's pair in a bitset
	// instead of searching for every secret in turn (20 times faster with
	// a runner's few dozen secrets).
	byPair map[uint16][]string
	pairs  [1 << 16 / 64]uint64
}

// NewMasker returns a Masker of the given values; duplicates, empty values
// and values shorter than [MinLen] are dropped.
func NewMasker(secrets ...string) *Masker {
	var s []string
	for _, v := range secrets {
		if len(v) >= MinLen && !slices.Contains(s, v) {
			s = append(s, v)
		}
	}
	if len(s) == 0 {
		return nil
	}
	slices.SortFunc(s, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	m := &Masker{secrets: s, byPair: map[uint16][]string{}}
	for _, v := range s {
		p := pair(v, 0)
		m.byPair[p] = append(m.byPair[p], v)
		m.pairs[p/64] |= 1 << (p % 64)
	}
	return m
}

// NewOutputMasker returns a Masker for a command's output, never nil: it
// masks the given values, as NewMasker's does, and also credentials by
// their form, whatever their value — the value of a NAME=value,
// NAME: value or "name": value line or member whose name [SecretKey]
// calls a credential (DB_PASS=…, "password": "…", Authorization: …), and
// the credentials of URLs (scheme://user:password@…, ?token=…). Its
// [Masker.Writer] passes output on a line at a time, so that a name and
// its value are judged together.
//
// It is for output that is recorded, not for logs: a log's own
// attributes may look like credentials (lockToken=7) and are not.
func NewOutputMasker(secrets ...string) *Masker {
	m := NewMasker(secrets...)
	if m == nil {
		m = &Masker{}
	}
	m.forms = true
	return m
}

func pair(s string, i int) uint16 { return uint16(s[i])<<8 | uint16(s[i+1]) }

// String returns s with every occurrence of a secret, and every overlap of
// occurrences, replaced by [Mask].
func (m *Masker) String(s string) string {
	if m == nil {
		return s
	}
	return masked(s, m.find(s))
}

// masked returns s with the intervals iv replaced by Mask.
func masked(s string, iv []span) string {
	if len(iv) == 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	last := 0
	for _, sp := range iv {
		b.WriteString(s[last:sp.i])
		b.WriteString(Mask)
		last = sp.j
	}
	b.WriteString(s[last:])
	return b.String()
}

// find returns the merged, ordered intervals of s that hold a secret;
// each interval's k is the least k of those merged into it.
func (m *Masker) find(s string) []span {
	var iv []span
	if len(m.secrets) > 0 {
		for i := 0; i+MinLen <= len(s); i++ {
			p := pair(s, i)
			if m.pairs[p/64]&(1<<(p%64)) == 0 {
				continue
			}
			for _, sec := range m.byPair[p] {
				if strings.HasPrefix(s[i:], sec) {
					iv = append(iv, span{i: i, j: i + len(sec), k: i})
				}
			}
		}
	}
	if m.forms {
		n := len(iv)
		if iv = formSpans(s, iv); n > 0 && len(iv) > n {
			slices.SortStableFunc(iv, func(a, b span) int { return cmp.Compare(a.i, b.i) })
		}
	}
	if len(iv) < 2 {
		return iv
	}
	out := iv[:1] // in order of start
	for _, sp := range iv[1:] {
		if last := &out[len(out)-1]; sp.i < last.j {
			last.j, last.k = max(last.j, sp.j), min(last.k, sp.k)
		} else {
			out = append(out, sp)
		}
	}
	return out
}

// Err returns err with its text masked; errors.Is and errors.As see
// through it to err. It returns nil for nil.
func (m *Masker) Err(err error) error {
	if err == nil || m == nil {
		return err
	}
	return &maskedError{err: err, m: m}
}

type maskedError struct {
	err error
	m   *Masker
}

func (e *maskedError) Error() string { return e.m.String(e.err.Error()) }
func (e *maskedError) Unwrap() error { return e.err }

// RecordWriter returns a writer that masks each Write on its own, for
// writers that receive whole records: a slog handler writes one record per
// call. With a nil Masker it returns w.
func (m *Masker) RecordWriter(w io.Writer) io.Writer {
	if m == nil {
		return w
	}
	return recordWriter{w: w, m: m}
}

type recordWriter struct {
	w io.Writer
	m *Masker
}

func (r recordWriter) Write(p []byte) (int, error) {
	if _, err := io.WriteString(r.w, r.m.String(string(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Writer returns a writer that masks a stream: it passes on what cannot
// be part of a secret and holds back what could be the start of one until
// more output shows whether it is, or Flush. A masker that masks forms
// (NewOutputMasker) also holds back the line being written until its end
// (a line end, \n or \r), or, for a line longer than MaxLine, all but
// its last bytes and any form not yet ended. Safe for concurrent writes.
func (m *Masker) Writer(w io.Writer) *Writer {
	return &Writer{w: w, m: m}
}

// MaxLine is how much of a line without an end a [Masker.Writer] that
// masks forms holds back before it passes on a part of it.
const MaxLine = 64 << 10

// formMargin is how much of a long line a Writer keeps when it passes on
// the rest: room for a name whose value has not arrived yet.
const formMargin = 2 * maxName

// Writer is a masking stream; see [Masker.Writer].
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	m   *Masker
	buf []byte
	// lineEnd is where the last line end held in buf ends (0: none).
	lineEnd int
	err     error
}

// Write masks p and passes on all but what could be the start of a secret.
// It reports the first error of the underlying writer, and otherwise
// always succeeds.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.m == nil {
		return w.w.Write(p)
	}
	w.buf = append(w.buf, p...)
	end := 0 // after the last line end in buf
	if w.m.forms {
		if n := bytes.LastIndexAny(p, "\n\r"); n >= 0 {
			end = len(w.buf) - len(p) + n + 1
		} else if end = w.lineEnd; end == 0 && len(w.buf) <= MaxLine {
			return len(p), w.err // the line goes on: nothing to judge yet
		}
	}
	s := string(w.buf)
	cut := len(s) - w.m.heldBack(s)
	switch {
	case !w.m.forms:
	case end > 0:
		cut = min(cut, end)
	default:
		cut = min(cut, len(s)-formMargin)
	}
	iv := w.m.find(s)
	// A secret, or a form and its secret, across the cut: keep all of it.
	for moved := true; moved; {
		moved = false
		for _, sp := range iv {
			if sp.k < cut && cut < sp.j {
				cut, moved = sp.k, true
			}
		}
	}
	n := 0 // the intervals before cut
	for n < len(iv) && iv[n].j <= cut {
		n++
	}
	if cut > 0 && w.err == nil {
		_, w.err = io.WriteString(w.w, masked(s[:cut], iv[:n]))
	}
	w.buf = append(w.buf[:0], s[cut:]...)
	w.lineEnd = max(0, end-cut)
	if w.err != nil {
		return 0, w.err
	}
	return len(p), nil
}

// Flush masks and passes on what is held back.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 && w.err == nil {
		_, w.err = io.WriteString(w.w, w.m.String(string(w.buf)))
	}
	w.buf, w.lineEnd = w.buf[:0], 0
	return w.err
}

// heldBack is the length of the longest suffix of s that is a proper
// prefix of a secret.
func (m *Masker) heldBack(s string) int {
	n := 0
	for _, sec := range m.secrets {
		for l := min(len(sec)-1, len(s)); l > n; l-- {
			if strings.HasSuffix(s, sec[:l]) {
				n = l
				break
			}
		}
	}
	return n
}

package redact

import (
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

// Masker replaces known secret values with [Mask]. A nil *Masker masks
// nothing. It is safe for concurrent use.
type Masker struct {
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
	last := 0
	for _, sp := range iv {
		b.WriteString(s[last:sp.i])
		b.WriteString(Mask)
		last = sp.j
	}
	b.WriteString(s[last:])
	return b.String()
}

// find returns the merged, ordered intervals of s that hold a secret.
func (m *Masker) find(s string) []span {
	var iv []span
	for i := 0; i+MinLen <= len(s); i++ {
		p := pair(s, i)
		if m.pairs[p/64]&(1<<(p%64)) == 0 {
			continue
		}
		for _, sec := range m.byPair[p] {
			if strings.HasPrefix(s[i:], sec) {
				iv = append(iv, span{i, i + len(sec)})
			}
		}
	}
	if len(iv) < 2 {
		return iv
	}
	out := iv[:1] // in order of start already
	for _, sp := range iv[1:] {
		if last := &out[len(out)-1]; sp.i < last.j {
			last.j = max(last.j, sp.j)
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
// more output shows whether it is, or Flush. Safe for concurrent writes.
func (m *Masker) Writer(w io.Writer) *Writer {
	return &Writer{w: w, m: m}
}

// Writer is a masking stream; see [Masker.Writer].
type Writer struct {
	mu  sync.Mutex
	w   io.Writer
	m   *Masker
	buf []byte
	err error
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
	s := string(w.buf)
	cut := len(s) - w.m.heldBack(s)
	iv := w.m.find(s)
	n := 0 // the intervals before cut
	for _, sp := range iv {
		if sp.i >= cut {
			break
		}
		if cut < sp.j { // a secret across the cut: keep all of it
			cut = sp.i
			break
		}
		n++
	}
	if cut > 0 && w.err == nil {
		_, w.err = io.WriteString(w.w, masked(s[:cut], iv[:n]))
	}
	w.buf = append(w.buf[:0], s[cut:]...)
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
	w.buf = w.buf[:0]
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

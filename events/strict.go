package events

import (
	"strconv"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// maxStrictDepth is encoding/json's own nesting limit: deeper documents
// are left to it to refuse.
const maxStrictDepth = 10000

// envelopeKeys and dataKeys are the keys encoding/json matches to the
// envelope's and data's fields — ignoring case, which checkStrict does not
// allow.
var (
	envelopeKeys = []string{"specversion", "id", "source", "type", "time", "subject", "datacontenttype", "dataschema", "data"}
	dataKeys     = []string{"schemaVersion", "pipeline", "changeId", "author", "executionId", "order", "targetSystem", "host",
		"runnerId", "lockToken", "durationMs", "errorMessage", "errorTrace", "metadata", "recovery", "transactional",
		"resolution", "operator", "reason", "prevHash", "prevSeq", "position"}
)

// checkStrict refuses a document that readers may read differently
// (ErrNotStrict): a key twice in one object, at any depth, also when one
// is spelt with escapes ("typ\u0065"); invalid UTF-8, or an escaped lone
// UTF-16 surrogate, anywhere; a key of the envelope or of data in another
// case ("Type"). encoding/json reads each of these one way — the last of
// the duplicates, U+FFFD, the field whatever its case — and parsers in
// other languages another (the first duplicate, an error, the raw bytes,
// an unknown attribute). A signature covers the bytes, so an event must
// have one reading for the signature to vouch for what every reader sees.
//
// It judges nothing else: what is not JSON at all is left to
// encoding/json to refuse and word. Only Decode's slow path runs it: what
// the fast path accepts is strict already.
func checkStrict(b []byte) error {
	w := walkers.Get().(*strictWalker)
	defer walkers.Put(w)
	*w = strictWalker{b: b, path: w.path[:0], keys: w.keys[:0], arena: w.arena[:0]}
	w.value(0)
	err := w.err
	clear(w.keys[:cap(w.keys)]) // hold no view of b
	clear(w.path[:cap(w.path)])
	w.b, w.err = nil, nil
	return err
}

// walkers keeps walkers with their buffers for the next document.
var walkers = sync.Pool{New: func() any { return &strictWalker{} }}

// strictWalker walks a JSON document, stopping at the first strictness
// problem (err) or syntax error (bad, left to encoding/json).
type strictWalker struct {
	b   []byte
	i   int
	err error
	bad bool
	// path is where the walk is, for naming the field of a problem;
	// keys holds the keys of the objects open along it, each object's
	// from its start in keys; arena holds the unescaped keys.
	path  []step
	keys  [][]byte
	arena []byte
}

// step is one level of a path: an object's key, or an array's index.
type step struct {
	key   []byte
	index int // -1 for a key
}

func (w *strictWalker) stopped() bool { return w.err != nil || w.bad }

func (w *strictWalker) ws() {
	for w.i < len(w.b) {
		switch w.b[w.i] {
		case ' ', '\t', '\n', '\r':
			w.i++
		default:
			return
		}
	}
}

// more consumes the ',' or the closing byte after a member or element; it
// reports whether another follows.
func (w *strictWalker) more(closing byte) bool {
	w.ws()
	switch {
	case w.i < len(w.b) && w.b[w.i] == ',':
		w.i++
		return true
	case w.i < len(w.b) && w.b[w.i] == closing:
		w.i++
	default:
		w.bad = true
	}
	return false
}

// value walks one value.
func (w *strictWalker) value(depth int) {
	w.ws()
	if w.i >= len(w.b) || depth > maxStrictDepth {
		w.bad = true
		return
	}
	switch w.b[w.i] {
	case '{':
		w.object(depth)
	case '[':
		w.i++
		w.ws()
		if w.i < len(w.b) && w.b[w.i] == ']' {
			w.i++
			return
		}
		w.path = append(w.path, step{index: 0})
		for n := 0; ; n++ {
			w.path[len(w.path)-1].index = n
			if w.value(depth + 1); w.stopped() || !w.more(']') {
				break
			}
		}
		w.path = w.path[:len(w.path)-1]
	case '"':
		w.str(false)
	default:
		w.bad = !w.literal()
	}
}

// literal consumes true, false, null or a number.
func (w *strictWalker) literal() bool {
	for _, lit := range []string{"true", "false", "null"} {
		if len(w.b)-w.i >= len(lit) && string(w.b[w.i:w.i+len(lit)]) == lit {
			w.i += len(lit)
			return true
		}
	}
	digits := func() int {
		n := 0
		for ; w.i < len(w.b) && '0' <= w.b[w.i] && w.b[w.i] <= '9'; w.i++ {
			n++
		}
		return n
	}
	if w.i < len(w.b) && w.b[w.i] == '-' {
		w.i++
	}
	start := w.i
	if n := digits(); n == 0 || n > 1 && w.b[start] == '0' {
		return false
	}
	if w.i < len(w.b) && w.b[w.i] == '.' {
		if w.i++; digits() == 0 {
			return false
		}
	}
	if w.i < len(w.b) && (w.b[w.i] == 'e' || w.b[w.i] == 'E') {
		if w.i++; w.i < len(w.b) && (w.b[w.i] == '+' || w.b[w.i] == '-') {
			w.i++
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}

// object walks an object, refusing a repeated key and, in the envelope
// and in data, a key of ours in another case.
func (w *strictWalker) object(depth int) {
	w.i++ // {
	var known []string
	switch {
	case len(w.path) == 0:
		known = envelopeKeys
	case len(w.path) == 1 && string(w.path[0].key) == "data":
		known = dataKeys
	}
	first := len(w.keys)
	defer func() { w.keys = w.keys[:first] }()
	var set map[string]struct{} // for objects with many keys (a large metadata)
	w.ws()
	if w.i < len(w.b) && w.b[w.i] == '}' {
		w.i++
		return
	}
	w.path = append(w.path, step{index: -1})
	defer func() { w.path = w.path[:len(w.path)-1] }()
	for {
		w.ws()
		if w.i >= len(w.b) || w.b[w.i] != '"' {
			w.bad = true
			return
		}
		w.path[len(w.path)-1].key = nil // a problem in the key is the object's
		key, ok := w.str(true)
		if !ok {
			return
		}
		w.path[len(w.path)-1].key = key
		dup := false
		if set != nil {
			_, dup = set[string(key)]
			set[string(key)] = struct{}{}
		} else {
			for _, k := range w.keys[first:] {
				dup = dup || string(k) == string(key)
			}
			if w.keys = append(w.keys, key); len(w.keys)-first > 32 {
				set = make(map[string]struct{}, 64)
				for _, k := range w.keys[first:] {
					set[string(k)] = struct{}{}
				}
			}
		}
		if dup {
			w.fail("the key %s appears twice: readers disagree on which value counts", strconv.Quote(string(key)))
			return
		}
		if k, ok := otherCase(known, key); ok {
			w.fail("the key %s is %s in another case: encoding/json reads it as %s, other readers do not", strconv.Quote(string(key)), strconv.Quote(k), k)
			return
		}
		w.ws()
		if w.i >= len(w.b) || w.b[w.i] != ':' {
			w.bad = true
			return
		}
		w.i++
		if w.value(depth + 1); w.stopped() || !w.more('}') {
			return
		}
	}
}

// otherCase returns the key of known that key spells in another case. No
// two known keys are one in another case, so a key spelt exactly is
// none's other case: the common case costs no case folding.
func otherCase(known []string, key []byte) (string, bool) {
	for _, k := range known {
		if k == string(key) {
			return "", false
		}
	}
	for _, k := range known {
		if strings.EqualFold(k, string(key)) {
			return k, true
		}
	}
	return "", false
}

// field names where the walk is: data.author, ext[2].a, or
// data.metadata["key"] for metadata and a key that is not a plain name.
// A step without a key (a problem in the key itself) names the object.
func (w *strictWalker) field() string {
	var b strings.Builder
	for i, st := range w.path {
		switch {
		case st.index >= 0:
			b.WriteString("[" + strconv.Itoa(st.index) + "]")
		case st.key == nil:
		case !plainKey(st.key) || b.String() == "data.metadata": // as checkMetadata names them
			b.WriteString("[" + strconv.Quote(clip(string(st.key), 40)) + "]")
		case i > 0:
			b.WriteString("." + string(st.key))
		default:
			b.Write(st.key)
		}
	}
	return b.String()
}

func plainKey(key []byte) bool {
	for _, c := range key {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return len(key) > 0
}

// str walks a string at '"'. For a key (key true) it returns the string
// unescaped, uncopied if it has no escapes; values are only checked.
func (w *strictWalker) str(key bool) ([]byte, bool) {
	w.i++ // "
	start := w.i
	from := -1 // where in arena the unescaped key starts, once it has an escape
	for w.i < len(w.b) {
		j := w.i
		for j < len(w.b) && plainByte[w.b[j]] {
			j++
		}
		if from >= 0 {
			w.arena = append(w.arena, w.b[w.i:j]...)
		}
		if w.i = j; j == len(w.b) {
			break
		}
		c := w.b[w.i]
		switch {
		case c == '"':
			w.i++
			if from < 0 {
				return w.b[start : w.i-1], true
			}
			return w.arena[from:len(w.arena):len(w.arena)], true
		case c < 0x20:
			w.bad = true
			return nil, false
		case c >= utf8.RuneSelf:
			r, size := utf8.DecodeRune(w.b[w.i:])
			if r == utf8.RuneError && size <= 1 {
				w.fail("invalid UTF-8 at byte %d: readers disagree on what it says (encoding/json reads U+FFFD)", w.i)
				return nil, false
			}
			if from >= 0 {
				w.arena = append(w.arena, w.b[w.i:w.i+size]...)
			}
			w.i += size
			continue
		}
		// A backslash: an escape.
		if key && from < 0 {
			from = len(w.arena)
			w.arena = append(w.arena, w.b[start:w.i]...)
		}
		if w.i+1 >= len(w.b) {
			w.bad = true
			return nil, false
		}
		e := w.b[w.i+1]
		if e != 'u' {
			r, ok := unescapeByte(e)
			if !ok {
				w.bad = true
				return nil, false
			}
			if from >= 0 {
				w.arena = append(w.arena, r)
			}
			w.i += 2
			continue
		}
		r, ok := hex4At(w.b, w.i+2)
		if !ok {
			w.bad = true
			return nil, false
		}
		n := 6
		if utf16.IsSurrogate(r) {
			lo, ok := hex4At(w.b, w.i+8)
			if r >= 0xDC00 || !ok || w.b[w.i+6] != '\\' || w.b[w.i+7] != 'u' || lo < 0xDC00 || lo > 0xDFFF {
				w.fail("an escaped lone surrogate (%s) at byte %d: not a character; readers disagree on what it says (encoding/json reads U+FFFD)", w.b[w.i:w.i+6], w.i)
				return nil, false
			}
			r, n = utf16.DecodeRune(r, lo), 12
		}
		if from >= 0 {
			w.arena = utf8.AppendRune(w.arena, r)
		}
		w.i += n
	}
	w.bad = true
	return nil, false
}

// plainByte marks the bytes a string holds as they are: ASCII but for
// control characters, the quote and the backslash.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// unescapeByte is the byte a one-letter JSON escape stands for.
func unescapeByte(e byte) (byte, bool) {
	switch e {
	case '"', '\\', '/':
		return e, true
	case 'b':
		return '\b', true
	case 'f':
		return '\f', true
	case 'n':
		return '\n', true
	case 'r':
		return '\r', true
	case 't':
		return '\t', true
	}
	return 0, false
}

func (w *strictWalker) fail(format string, args ...any) {
	w.err = fieldErr(ErrNotStrict, w.field(), format, args...)
}

// hex4At reads four hex digits at b[i:].
func hex4At(b []byte, i int) (rune, bool) {
	if i < 0 || i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

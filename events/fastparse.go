package events

import (
	"math"
	"unicode/utf16"
	"unicode/utf8"
)

// parseFast is Decode's fast path: a hand-written parser for the JSON that
// Encode writes, several times faster than encoding/json, which a
// projector otherwise spends as much time in as in its store.
//
// It never judges an event. It fills env and d only when the document is
// plainly well formed: valid JSON, every key one of ours spelt exactly,
// none repeated, every value of its field's JSON type, integers in range,
// strings valid UTF-8 without lone surrogates, a schemaVersion this build
// reads. On anything else — an extension attribute, a key in another case,
// a duplicate, a null, a number with a fraction, invalid UTF-8, a newer
// version — it returns false and Decode takes the encoding/json path,
// which refuses what is not strict (checkStrict) and otherwise decides
// what such a document means and words the error. So what
// it accepts, it reads exactly as that path would; FuzzParseFastAgrees
// checks this on arbitrary input.
func parseFast(b []byte, env *envelope, d *data) bool {
	s := scanner{b: b, src: string(b)}
	var seen uint16
	ok := s.object(func(key []byte) bool {
		var bit uint16
		var dst *string
		switch string(key) {
		case "specversion":
			bit, dst = 1<<0, &env.SpecVersion
		case "id":
			bit, dst = 1<<1, &env.ID
		case "source":
			bit, dst = 1<<2, &env.Source
		case "type":
			bit, dst = 1<<3, &env.Type
		case "time":
			bit, dst = 1<<4, &env.Time
		case "subject":
			bit, dst = 1<<5, &env.Subject
		case "datacontenttype":
			bit, dst = 1<<6, &env.DataContentType
		case "dataschema":
			bit, dst = 1<<7, &env.DataSchema
		case "data":
			bit = 1 << 8
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		if dst == nil {
			return s.data(d)
		}
		var ok bool
		*dst, ok = s.str()
		return ok
	})
	if !ok || !s.end() || seen&(1<<8) == 0 || env.SpecVersion != SpecVersion ||
		(env.DataContentType != "" && env.DataContentType != DataContentType) {
		return false
	}
	return d.SchemaVersion != nil && *d.SchemaVersion >= 1 && *d.SchemaVersion <= SchemaVersion
}

// data reads the data object into d.
func (s *scanner) data(d *data) bool {
	var seen uint32
	return s.object(func(key []byte) bool {
		var bit uint32
		var dst *string
		switch string(key) {
		case "pipeline":
			bit, dst = 1<<0, &d.Pipeline
		case "changeId":
			bit, dst = 1<<1, &d.ChangeID
		case "author":
			bit, dst = 1<<2, &d.Author
		case "executionId":
			bit, dst = 1<<3, &d.ExecutionID
		case "order":
			bit, dst = 1<<4, &d.Order
		case "targetSystem":
			bit, dst = 1<<5, &d.TargetSystem
		case "host":
			bit, dst = 1<<6, &d.Host
		case "runnerId":
			bit, dst = 1<<7, &d.RunnerID
		case "errorMessage":
			bit, dst = 1<<8, &d.ErrorMessage
		case "errorTrace":
			bit, dst = 1<<9, &d.ErrorTrace
		case "operator":
			bit, dst = 1<<10, &d.Operator
		case "reason":
			bit, dst = 1<<11, &d.Reason
		case "prevHash":
			bit, dst = 1<<12, &d.PrevHash
		case "recovery":
			bit = 1 << 13
		case "resolution":
			bit = 1 << 14
		case "schemaVersion":
			bit = 1 << 15
		case "lockToken":
			bit = 1 << 16
		case "durationMs":
			bit = 1 << 17
		case "transactional":
			bit = 1 << 18
		case "metadata":
			bit = 1 << 19
		case "prevSeq":
			bit = 1 << 20
		case "position":
			bit = 1 << 21
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		if dst != nil {
			var ok bool
			*dst, ok = s.str()
			return ok
		}
		switch bit {
		case 1 << 13:
			v, ok := s.str()
			d.Recovery = Recovery(v)
			return ok
		case 1 << 14:
			v, ok := s.str()
			d.Resolution = Resolution(v)
			return ok
		case 1 << 15:
			n, ok := s.uint(math.MaxInt64)
			v := int(n)
			d.SchemaVersion = &v
			return ok
		case 1 << 16:
			var ok bool
			d.LockToken, ok = s.uint(math.MaxUint64)
			return ok
		case 1 << 17:
			n, ok := s.uint(math.MaxInt64)
			d.DurationMs = int64(n)
			return ok
		case 1 << 18:
			var ok bool
			d.Transactional, ok = s.bool()
			return ok
		case 1 << 20:
			var ok bool
			d.PrevSeq, ok = s.uint(math.MaxUint64)
			return ok
		case 1 << 21:
			var ok bool
			d.Position, ok = s.uint(math.MaxUint64)
			return ok
		default: // metadata
			return s.metadata(d)
		}
	})
}

// metadata reads the metadata object. Its keys are the user's, so they
// may hold escapes.
func (s *scanner) metadata(d *data) bool {
	md := map[string]string{}
	d.Metadata = md
	if !s.byte('{') {
		return false
	}
	if s.byte('}') {
		return true
	}
	for {
		k, ok := s.str()
		if !ok || !s.byte(':') {
			return false
		}
		if _, dup := md[k]; dup {
			return false
		}
		if md[k], ok = s.str(); !ok {
			return false
		}
		if s.byte(',') {
			continue
		}
		return s.byte('}')
	}
}

// scanner reads JSON from b at i. src is b as one string, which the
// strings without escapes are cut from: one allocation per event, not one
// per field.
type scanner struct {
	b   []byte
	src string
	i   int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// byte consumes c after any white space.
func (s *scanner) byte(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end reports whether only white space is left.
func (s *scanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

// object reads an object whose keys are plain (no escapes), calling
// field for each key with the scanner after its colon. A field that returns
// false stops the parse.
func (s *scanner) object(field func(key []byte) bool) bool {
	if !s.byte('{') {
		return false
	}
	if s.byte('}') {
		return true
	}
	for {
		key, ok := s.plainKey()
		if !ok || !s.byte(':') || !field(key) {
			return false
		}
		if s.byte(',') {
			continue
		}
		return s.byte('}')
	}
}

// plainKey reads a string without escapes or control characters and
// returns its bytes, uncopied.
func (s *scanner) plainKey() ([]byte, bool) {
	if !s.byte('"') {
		return nil, false
	}
	start := s.i
	for ; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; {
		case c == '"':
			s.i++
			return s.b[start : s.i-1], true
		case c == '\\' || c < 0x20:
			return nil, false
		}
	}
	return nil, false
}

// str reads a string, returning false for anything but a well-formed
// string of valid UTF-8 without lone surrogates.
func (s *scanner) str() (string, bool) {
	if !s.byte('"') {
		return "", false
	}
	start := s.i
	ascii := true
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			end := s.i
			s.i++
			if !ascii && !utf8.ValidString(s.src[start:end]) {
				return "", false
			}
			return s.src[start:end], true
		case c == '\\':
			return s.escaped(start)
		case c < 0x20:
			return "", false
		case c >= utf8.RuneSelf:
			ascii = false
		}
		s.i++
	}
	return "", false
}

// escaped finishes a string that has escapes, from its first backslash.
func (s *scanner) escaped(start int) (string, bool) {
	buf := make([]byte, s.i-start, s.i-start+64)
	copy(buf, s.b[start:s.i])
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			if !utf8.Valid(buf) {
				return "", false
			}
			return string(buf), true
		case c < 0x20:
			return "", false
		case c != '\\':
			buf = append(buf, c)
			s.i++
			continue
		}
		if s.i+1 >= len(s.b) {
			return "", false
		}
		switch e := s.b[s.i+1]; e {
		case 'u':
			r, ok := s.hex4(s.i + 2)
			if !ok {
				return "", false
			}
			if utf16.IsSurrogate(r) {
				// Only a high surrogate followed by an escaped low one.
				lo, ok := s.hex4(s.i + 8)
				if !ok || r >= 0xDC00 || s.b[s.i+6] != '\\' || s.b[s.i+7] != 'u' || lo < 0xDC00 || lo > 0xDFFF {
					return "", false
				}
				r = utf16.DecodeRune(r, lo)
				s.i += 6
			}
			buf = utf8.AppendRune(buf, r)
			s.i += 4
		default:
			c, ok := unescapeByte(e)
			if !ok {
				return "", false
			}
			buf = append(buf, c)
		}
		s.i += 2
	}
	return "", false
}

// hex4 reads four hex digits at i.
func (s *scanner) hex4(i int) (rune, bool) { return hex4At(s.b, i) }

// uint reads a non-negative integer of at most limit, written without a
// fraction or an exponent.
func (s *scanner) uint(limit uint64) (uint64, bool) {
	s.ws()
	start := s.i
	var n uint64
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		d := uint64(s.b[s.i] - '0')
		if n > (limit-d)/10 {
			return 0, false
		}
		n = n*10 + d
		s.i++
	}
	if s.i == start || (s.b[start] == '0' && s.i-start > 1) {
		return 0, false
	}
	return n, true
}

func (s *scanner) bool() (bool, bool) {
	s.ws()
	switch {
	case len(s.b)-s.i >= 4 && string(s.b[s.i:s.i+4]) == "true":
		s.i += 4
		return true, true
	case len(s.b)-s.i >= 5 && string(s.b[s.i:s.i+5]) == "false":
		s.i += 5
		return false, true
	}
	return false, false
}

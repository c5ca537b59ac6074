package events

import (
	"fmt"
	"strings"
)

// DefaultSubjectPrefix is where execution events live: one subject per
// change, <prefix>.<pipeline>.<changeId>.
const DefaultSubjectPrefix = "audit.exec"

// Subject returns the subject of a change's events. Because each change has
// its own subject, the stream's last message on it is the change's current
// state, and Nats-Expected-Last-Subject-Sequence can guard it.
func Subject(prefix, pipeline, changeID string) string {
	return prefix + "." + EncodeToken(pipeline) + "." + EncodeToken(changeID)
}

// EncodeToken makes s usable as one NATS subject token. Letters, digits, '-'
// and '_' pass unchanged, so typical ids stay readable
// ("001-create-users"); every other byte, including '%' itself, becomes %XX
// (upper-case hex), as in URL percent-encoding. NATS tokens may not contain
// '.', '*', '>' or white space, and the encoding is reversible and
// injective, so two ids never share a subject. The empty string encodes as
// "%" so it remains a token.
func EncodeToken(s string) string {
	if s == "" {
		return "%"
	}
	safe := true
	for i := 0; i < len(s); i++ {
		if !tokenSafe(s[i]) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) * 3)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if tokenSafe(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// DecodeToken reverses EncodeToken.
func DecodeToken(tok string) (string, error) {
	if tok == "%" {
		return "", nil
	}
	if tok == "" {
		return "", fmt.Errorf("events: empty subject token")
	}
	var b strings.Builder
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if tokenSafe(c) {
			b.WriteByte(c)
			continue
		}
		if c != '%' {
			return "", fmt.Errorf("events: byte %q at %d must be escaped in subject token %q", c, i, tok)
		}
		if i+2 >= len(tok) {
			return "", fmt.Errorf("events: bad escape at %d in subject token %q", i, tok)
		}
		hi, lo := unhex(tok[i+1]), unhex(tok[i+2])
		// Only the canonical form is accepted, so each id has one token.
		if hi < 0 || lo < 0 || tokenSafe(byte(hi<<4|lo)) {
			return "", fmt.Errorf("events: bad escape at %d in subject token %q", i, tok)
		}
		b.WriteByte(byte(hi<<4 | lo))
		i += 2
	}
	return b.String(), nil
}

func tokenSafe(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

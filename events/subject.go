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

// ParseSubject returns the pipeline and change id whose subject subject is
// (see Subject), or an error if it is not one: another prefix, other than
// two tokens after it, or a token that is not in EncodeToken's form.
func ParseSubject(prefix, subject string) (pipeline, changeID string, err error) {
	rest, ok := strings.CutPrefix(subject, prefix+".")
	if !ok {
		return "", "", fmt.Errorf("events: subject %q is not under %q", subject, prefix)
	}
	p, c, ok := strings.Cut(rest, ".")
	if !ok || strings.Contains(c, ".") {
		return "", "", fmt.Errorf("events: subject %q is not %s.<pipeline>.<changeId>", subject, prefix)
	}
	if pipeline, err = DecodeToken(p); err != nil {
		return "", "", err
	}
	if changeID, err = DecodeToken(c); err != nil {
		return "", "", err
	}
	return pipeline, changeID, nil
}

// CheckSubject reports whether e, read from the stream on subject, is an
// event of the change that subject belongs to (prefix is the stream's
// subject prefix, e.g. DefaultSubjectPrefix). Decode cannot tell: an event
// of one change published on another's subject decodes fine, and a reader
// by subject (a runner) would take it for the other change's state. A
// mismatch is an *Error wrapping ErrWrongSubject that names both changes.
// Readers of the stream treat it like an event that does not decode:
// projectors dead-letter it, runners stop the change for an operator,
// verify reports it.
func CheckSubject(prefix, subject string, e Event) error {
	if subject == Subject(prefix, e.Pipeline, e.ChangeID) {
		return nil
	}
	where := "subject " + subject + ", which is no change's subject"
	if p, c, err := ParseSubject(prefix, subject); err == nil {
		where = fmt.Sprintf("change %s's subject (%s)", describeChange(p, c, p != e.Pipeline), subject)
	}
	return &Error{Err: ErrWrongSubject,
		Reason: fmt.Sprintf("event for change %s published on %s", describeChange(e.Pipeline, e.ChangeID, true), where)}
}

// describeChange names a change, with its pipeline if withPipeline.
func describeChange(pipeline, changeID string, withPipeline bool) string {
	if withPipeline {
		return fmt.Sprintf("%q of pipeline %q", changeID, pipeline)
	}
	return fmt.Sprintf("%q", changeID)
}

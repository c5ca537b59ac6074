package redact

import (
	"os"
	"strings"
)

// Bounds of the forms, which also bound the work per form: a longer run
// of name characters before a separator is not a name; a line prefix
// longer than maxPrefix is not a shell declaration; a value is masked up
// to maxValue bytes.
const (
	maxName   = 128
	maxPrefix = 256
	maxValue  = 16 << 10
)

// formSpans appends the spans of s that hold a credential by their form,
// whatever its value — text a masker was never told is secret (a password
// a command read from a file and printed):
//
//   - the value of NAME=value, NAME: value, NAME := value, "name": value
//     and 'name': value (also inside escaped JSON: \"name\":\"value\"),
//     when SecretKey(NAME): quoted, up to the closing quote; unquoted after
//     a name that starts its line (env, set, export, a .env or YAML file),
//     to the end of the line; elsewhere up to the next space or delimiter
//     (,;&)]}<>'"). Values true, false, null, none, yes, no, on and off,
//     and paths of files that exist here, are left alone, as are objects
//     and arrays (their members are judged by their own names), and the
//     variables EnvSecrets leaves alone (PWD, OLDPWD,
//     AUDITFLOW_LOCK_TOKEN);
//   - the credentials of a URL (scheme://…, up to a space or a quote), as
//     URI hides them: the password of user:password@ (and a bare user@,
//     which may be a token), and credential query parameters.
//
// Values shorter than MinLen are left alone, as a Masker leaves them; a
// value is masked up to maxValue bytes. No span crosses a line end. Each span's k is where its form starts (the
// name, the URL), for a writer that must not cut a form from its value.
func formSpans(s string, out []span) []span {
	eq, colon := -1, -1 // the next = and : at or after i, found by IndexByte (fast)
	next := func(c byte, from int) int {
		if n := strings.IndexByte(s[from:], c); n >= 0 {
			return from + n
		}
		return len(s)
	}
	for i := 0; i < len(s); {
		if eq < i {
			eq = next('=', i)
		}
		if colon < i {
			colon = next(':', i)
		}
		p := min(eq, colon)
		if p == len(s) {
			break
		}
		i = p + 1
		if s[p] == ':' && strings.HasPrefix(s[p:], "://") {
			var end int
			out, end = urlSpans(s, p, out)
			i = max(i, end)
			continue
		}
		v := p + 1
		switch {
		case s[p] == ':' && v < len(s) && s[v] == '=': // :=
			v++
		case s[p] == '=' && v < len(s) && (s[v] == '=' || s[v] == '>' || s[v] == '~'): // ==, =>, =~
			i = v + 1
			continue
		case s[p] == '=' && p > 0 && strings.IndexByte("=!<>+*/%|&^:", s[p-1]) >= 0:
			continue // a comparison, an operator, or the = of a := seen already
		}
		k, name, quoted := nameBefore(s, p)
		if name == "" || !SecretKey(name) || notSecret[name] {
			continue
		}
		vs, ve, ok := valueAt(s, v, quoted || !lineStart(s, k))
		if !ok {
			continue
		}
		if val := s[vs:ve]; len(val) >= MinLen && !plainValue(val) {
			out = append(out, span{i: vs, j: ve, k: k})
		}
		i = max(i, ve)
	}
	return out
}

// nameBefore finds the name before the separator at p: it returns where
// the name (with its opening quote) starts, the name, and whether it was
// quoted.
func nameBefore(s string, p int) (int, string, bool) {
	j := p
	for j > 0 && p-j < 8 && (s[j-1] == ' ' || s[j-1] == '\t') {
		j--
	}
	quote := byte(0)
	if j > 0 && (s[j-1] == '"' || s[j-1] == '\'') {
		quote = s[j-1]
		j--
		if j > 0 && s[j-1] == '\\' {
			j--
		}
	}
	k := j
	for k > 0 && j-k <= maxName && isNameChar(s[k-1]) {
		k--
	}
	if k == j || j-k > maxName {
		return 0, "", false
	}
	name := s[k:j]
	if quote != 0 {
		if k == 0 || s[k-1] != quote {
			return 0, "", false // a closing quote without its opening one
		}
		k--
		if k > 0 && s[k-1] == '\\' {
			k--
		}
	}
	return k, name, quote != 0
}

func isNameChar(c byte) bool { return isAlnum(c) || c == '_' || c == '.' || c == '-' }

// lineStart reports whether the name at k starts its line: nothing before
// it on the line but blanks, list and comment markers and shell
// declarations (env, set -x, export, YAML, .env and INI files).
func lineStart(s string, k int) bool {
	from := max(0, k-maxPrefix)
	b := strings.LastIndexAny(s[from:k], "\n\r")
	if b < 0 && from > 0 {
		return false
	}
	b += from + 1
	prefix := strings.TrimSpace(strings.TrimLeft(s[b:k], " \t+-#>*"))
	switch prefix {
	case "", "export", "declare -x", "readonly", "local", "set", "setenv", "ENV", "ARG":
		return true
	}
	return false
}

// valueAt finds the value that starts at or after v (after blanks): inside
// its quotes, or unquoted up to a delimiter if inLine, else to the end of
// the line. It reports false for no value, an object or an array.
func valueAt(s string, v int, inLine bool) (int, int, bool) {
	for v < len(s) && (s[v] == ' ' || s[v] == '\t') {
		v++
	}
	if v >= len(s) {
		return 0, 0, false
	}
	eol := min(len(s), v+maxValue)
	if n := strings.IndexAny(s[v:eol], "\n\r"); n >= 0 {
		eol = v + n
	}
	switch c := s[v]; {
	case c == '\n' || c == '\r' || c == '{' || c == '[':
		return 0, 0, false
	case c == '\\' && v+1 < eol && s[v+1] == '"': // \"value\" in escaped JSON
		if n := strings.Index(s[v+2:eol], `\"`); n >= 0 {
			return v + 2, v + 2 + n, true
		}
		return v + 2, eol, true
	case c == '"':
		for j := v + 1; j < eol; j++ {
			switch s[j] {
			case '\\':
				j++
			case '"':
				return v + 1, j, true
			}
		}
		return v + 1, eol, true
	case c == '\'':
		if n := strings.IndexByte(s[v+1:eol], '\''); n >= 0 {
			return v + 1, v + 1 + n, true
		}
		return v + 1, eol, true
	}
	if !inLine {
		return v, len(strings.TrimRight(s[:eol], " \t")), true
	}
	if n := strings.IndexAny(s[v:eol], " \t,;&)]}<>'\"\\"); n >= 0 {
		return v, v + n, true
	}
	return v, eol, true
}

// plainValue reports whether a value a credential's name holds is none:
// a word like true or off (it says whether, not what), or the absolute
// path of a file or directory that exists (TLS_CERT=/etc/ssl/cert.pem,
// PIP_CERT=/etc/ssl/certs/ca-certificates.crt: the path is not the
// secret; what a secret file holds is, see SecretFiles).
func plainValue(v string) bool {
	switch strings.ToLower(v) {
	case "true", "false", "null", "none", "yes", "no", "on", "off":
		return true
	}
	if !strings.HasPrefix(v, "/") || strings.ContainsAny(v, " \t\n\r") {
		return false
	}
	_, err := os.Stat(v)
	return err == nil
}

// urlSpans appends the credentials of the URL whose "://" is at p, and
// returns where the URL ends.
func urlSpans(s string, p int, out []span) ([]span, int) {
	st := p
	for st > 0 && isSchemeChar(s[st-1]) {
		st--
	}
	for st < p && !isLetter(s[st]) { // a scheme starts with a letter
		st++
	}
	end := p + 3
	for end < len(s) && strings.IndexByte(" \t\n\r\"'<>`\\", s[end]) < 0 {
		end++
	}
	if st == p {
		return out, end
	}
	for _, sp := range scanOne(s, segment{i: st, j: end, body: p + 3, scheme: strings.ToLower(s[st:p])}) {
		if sp.j-sp.i >= MinLen {
			out = append(out, span{i: sp.i, j: sp.j, k: st})
		}
	}
	return out, end
}

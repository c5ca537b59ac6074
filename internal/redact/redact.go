package redact

import (
	"net/url"
	"strings"
)

// Marker replaces a credential in what [URI] returns.
const Marker = "redacted"

// URI returns s with every credential part replaced by [Marker]: the
// password of user:password@ (the user stays, it names who connects), a
// bare token@ (NATS token auth; for mongodb:// a bare name is a user and
// stays), and the values of credential-like query parameters. s may be a
// comma-separated list of URLs, and need not parse.
func URI(s string) string {
	spans := scan(s)
	if len(spans) == 0 {
		return s
	}
	var b strings.Builder
	last := 0
	for _, sp := range spans {
		b.WriteString(s[last:sp.i])
		b.WriteString(Marker)
		last = sp.j
	}
	b.WriteString(s[last:])
	return b.String()
}

// Secrets returns the credential parts [URI] hides, as written and
// percent-decoded, for a [Masker].
func Secrets(s string) []string {
	var out []string
	for _, sp := range scan(s) {
		raw := s[sp.i:sp.j]
		out = append(out, raw)
		for _, unescape := range []func(string) (string, error){url.PathUnescape, url.QueryUnescape} {
			if d, err := unescape(raw); err == nil && d != raw {
				out = append(out, d)
			}
		}
	}
	return out
}

// span is a credential at s[i:j], in a form (a NAME=value, a URL) that
// starts at k; k is i where there is no form, and 0 where no one asks.
type span struct{ i, j, k int }

// scan finds the credentials in s. It reads s as text, without a URL
// parser, so a malformed URL (a bad escape, a bad port, an unencoded @ or /
// in a password) is covered too: the userinfo runs to the segment's last @,
// which hides too much rather than too little when an @ appears later.
func scan(s string) []span {
	var out []span
	for _, seg := range segments(s) {
		out = append(out, scanOne(s, seg)...)
	}
	return out
}

// segment is one URL of a list: s[i:j], its body (after "scheme://")
// starting at body.
type segment struct {
	i, j, body int
	scheme     string
}

// segments splits a list of URLs. A new URL starts at a "scheme://" at the
// start or after a comma; commas elsewhere belong to the URL (MongoDB and
// Couchbase host lists, authMechanismProperties). Without any "://", the
// list is NATS's schemeless form, split at every comma.
func segments(s string) []segment {
	if !strings.Contains(s, "://") {
		var out []segment
		i := 0
		for _, part := range strings.SplitAfter(s, ",") {
			j := i + len(part)
			out = append(out, segment{i: i, j: j, body: i})
			i = j
		}
		return out
	}
	var starts []int
	var schemes []string
	for k := 0; ; {
		n := strings.Index(s[k:], "://")
		if n < 0 {
			break
		}
		at := k + n
		st := at
		for st > 0 && isSchemeChar(s[st-1]) {
			st--
		}
		before := strings.TrimRight(s[:st], " \t")
		if st < at && isLetter(s[st]) && (before == "" || strings.HasSuffix(before, ",")) {
			starts = append(starts, st)
			schemes = append(schemes, strings.ToLower(s[st:at]))
		}
		k = at + 3
	}
	var out []segment
	if len(starts) == 0 || starts[0] > 0 {
		end := len(s)
		if len(starts) > 0 {
			end = starts[0]
		}
		out = append(out, segment{i: 0, j: end, body: 0})
	}
	for n, st := range starts {
		end := len(s)
		if n+1 < len(starts) {
			end = starts[n+1]
		}
		out = append(out, segment{i: st, j: end, body: st + len(schemes[n]) + 3, scheme: schemes[n]})
	}
	return out
}

func scanOne(s string, seg segment) []span {
	var out []span
	body := seg.body
	for body < seg.j && (s[body] == ' ' || s[body] == '\t') {
		body++
	}
	rest := body
	if at := strings.LastIndexByte(s[body:seg.j], '@'); at >= 0 {
		user := s[body : body+at]
		switch colon := strings.IndexByte(user, ':'); {
		case colon >= 0 && colon+1 < len(user):
			out = append(out, span{i: body + colon + 1, j: body + at})
		case colon >= 0:
		case strings.HasPrefix(seg.scheme, "mongodb") && user != "":
			// a user without a password (X.509, Kerberos): a name, not a secret
		case user != "":
			out = append(out, span{i: body, j: body + at})
		}
		rest = body + at + 1
	}
	q := strings.IndexByte(s[rest:seg.j], '?')
	if q < 0 {
		return out
	}
	end := seg.j
	if h := strings.IndexByte(s[rest+q:seg.j], '#'); h >= 0 {
		end = rest + q + h
	}
	for i := rest + q + 1; i < end; {
		j := i + strings.IndexAny(s[i:end], "&;")
		if j < i {
			j = end
		}
		out = append(out, scanParam(s, i, j)...)
		i = j + 1
	}
	return out
}

// scanParam finds the credential in the query parameter s[i:j].
func scanParam(s string, i, j int) []span {
	eq := strings.IndexByte(s[i:j], '=')
	if eq < 0 || i+eq+1 == j {
		return nil
	}
	key := unescape(s[i : i+eq])
	v := i + eq + 1
	if SecretKey(key) {
		return []span{{i: v, j: j}}
	}
	if !strings.EqualFold(key, "authMechanismProperties") {
		return nil
	}
	// KEY:value pairs, comma-separated; the colon may be escaped.
	var out []span
	for k := v; k < j; {
		e := k + strings.IndexByte(s[k:j], ',')
		if e < k {
			e = j
		}
		item := s[k:e]
		sep, width := strings.IndexByte(item, ':'), 1
		if p := strings.Index(strings.ToUpper(item), "%3A"); p >= 0 && (sep < 0 || p < sep) {
			sep, width = p, 3
		}
		if sep >= 0 && sep+width < len(item) && SecretKey(unescape(item[:sep])) {
			out = append(out, span{i: k + sep + width, j: e})
		}
		k = e + 1
	}
	return out
}

func unescape(s string) string {
	if d, err := url.QueryUnescape(s); err == nil {
		return d
	}
	return s
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

func isSchemeChar(c byte) bool {
	return isLetter(c) || '0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'
}

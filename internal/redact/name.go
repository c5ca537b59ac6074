package redact

// SecretKey reports whether a variable, parameter or key name says its
// value is a credential. It reads the name as words — split at every
// character but letters and digits and at camelCase humps (DB_PASS,
// db-pass, dbPass and X-Api-Key are two or three words each), in any case,
// trailing digits dropped — and calls it a credential's name if
//
//   - any word is, or ends in, a credential: password(s), passwd,
//     passphrase, pwd, secret(s), token(s), credential(s), apikey,
//     privatekey, signature — GITHUB_TOKEN, MYSQL_PWD, clientSecret,
//     SECRET_KEY_BASE, DBPASSWORD; or
//   - its last word is one that names a credential at the end of a name:
//     pass, pw, key(s), auth, authorization, cert, certificate, private,
//     sig, cookie — DB_PASS, STRIPE_KEY, SMTP_AUTH, TLS_CERT, apiKey
//     (AUTH_MECHANISM, authSource or KEY_ID say how or which, not what);
//
// unless its last word says the value is about a credential rather than
// one: a file, path, dir, id, name, type, URL or URI, host, port, user,
// length, size, TTL, timeout, expiry, method, mechanism, source, mode,
// format or algorithm (PASSWORD_FILE, AWS_ACCESS_KEY_ID, TOKEN_TYPE,
// TOKEN_URL). Being words, KEYBOARD, MONKEY, PASSAGE, BYPASS, AUTHOR and
// TOKENIZER are not credentials.
func SecretKey(name string) bool {
	strong, last := false, wordOther
	for i := 0; i < len(name); {
		var w string
		if w, i = nextWord(name, i); w == "" {
			continue
		}
		for len(w) > 0 && isDigit(w[len(w)-1]) {
			w = w[:len(w)-1]
		}
		var buf [32]byte
		lw := lower(buf[:0], w)
		if len(lw) == 0 {
			continue
		}
		last = classify(lw)
		strong = strong || last == wordStrong || endsStrong(lw)
	}
	return last != wordAbout && (strong || last == wordWeak)
}

// Kinds of words in a name.
const (
	wordOther  = iota
	wordStrong // a credential wherever it is
	wordWeak   // a credential at the end of a name
	wordAbout  // at the end, says the value is about a credential
)

func classify(w []byte) int {
	switch string(w) {
	case "password", "passwords", "passwd", "passphrase", "pwd", "secret", "secrets", "token", "tokens",
		"credential", "credentials", "apikey", "privatekey", "signature":
		return wordStrong
	case "pass", "pw", "key", "keys", "auth", "authorization", "cert", "certificate", "private", "sig", "cookie":
		return wordWeak
	case "file", "files", "path", "dir", "id", "ids", "name", "type", "url", "uri", "host", "port", "user", "username",
		"len", "length", "size", "ttl", "timeout", "expiry", "expires", "method", "mechanism", "source", "mode",
		"format", "alg", "algorithm":
		return wordAbout
	}
	return wordOther
}

// endsStrong reports whether a word ends in a credential word that is
// seldom the end of another word: DBPASSWORD, MYSQLPWD, GITHUBTOKEN.
func endsStrong(w []byte) bool {
	for _, n := range []int{3, 5, 6, 8, 10} { // the lengths of the suffixes below
		if len(w) <= n {
			break
		}
		switch string(w[len(w)-n:]) {
		case "pwd", "token", "secret", "password", "passphrase", "credential":
			return true
		}
	}
	return false
}

// lower appends w in lower case to dst, cut at its capacity (a word
// longer than that is no word of the lists).
func lower(dst []byte, w string) []byte {
	for i := 0; i < len(w) && len(dst) < cap(dst); i++ {
		c := w[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// nextWord returns the word of name that starts at or after i, and where
// to look for the next one. Words are runs of letters and digits, split
// where a lower-case letter or digit is followed by an upper-case one
// (dbPass) and before the last capital of a run followed by a lower-case
// letter (APIKey).
func nextWord(name string, i int) (string, int) {
	for i < len(name) && !isAlnum(name[i]) {
		i++
	}
	start := i
	for i++; i < len(name) && isAlnum(name[i]); i++ {
		c, prev := name[i], name[i-1]
		if isUpper(c) && (isLower(prev) || isDigit(prev)) || isUpper(c) && isUpper(prev) && i+1 < len(name) && isLower(name[i+1]) {
			break
		}
	}
	if start >= len(name) {
		return "", len(name)
	}
	return name[start:i], i
}

func isUpper(c byte) bool { return 'A' <= c && c <= 'Z' }
func isLower(c byte) bool { return 'a' <= c && c <= 'z' }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isAlnum(c byte) bool { return isUpper(c) || isLower(c) || isDigit(c) }

package redact

import (
	"regexp"
	"strings"
)

// EnvSecrets returns the secret values in an environment (os.Environ's
// form): the whole value of every variable whose name [SecretKey] calls a
// credential (AUDITFLOW_COUCHBASE_PASSWORD, AWS_SECRET_ACCESS_KEY,
// AWS_SESSION_TOKEN, GITHUB_TOKEN, DB_PASS, STRIPE_KEY, SMTP_AUTH,
// MYSQL_PWD…; not names ending in _FILE, _PATH or _DIR, which hold paths,
// nor values like true or off, which say whether, not what, nor the paths
// of files that exist, as TLS_CERT's often is), and the credentials of
// every URL in a value (AUDITFLOW_NATS_URL, AUDITFLOW_MONGO_URI,
// DATABASE_URL…).
func EnvSecrets(environ []string) []string {
	var out []string
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || value == "" || notSecret[name] {
			continue
		}
		if SecretKey(name) && !pathName(name) && !plainValue(value) {
			out = append(out, value)
		}
		if strings.Contains(value, "@") || strings.Contains(value, "://") {
			out = append(out, Secrets(value)...)
		}
	}
	return out
}

// notSecret are variables whose names look like credentials but are not:
// the fencing token the runner sets for each change, and the shell's
// working directories (PWD: "pwd" is also a password's abbreviation).
var notSecret = map[string]bool{"AUDITFLOW_LOCK_TOKEN": true, "PWD": true, "OLDPWD": true}

func pathName(name string) bool {
	n := strings.ToUpper(name)
	return strings.HasSuffix(n, "_FILE") || strings.HasSuffix(n, "_PATH") || strings.HasSuffix(n, "_DIR")
}

// SecretFiles returns the paths, from an environment, of files that hold
// secrets: variables ending in _CREDS, _NKEY or _TLS_KEY
// (AUDITFLOW_NATS_CREDS, AUDITFLOW_NATS_NKEY, AUDITFLOW_NATS_TLS_KEY), and
// variables ending in _FILE whose stem names a credential, a key, a URI or
// a URL (AUDITFLOW_COUCHBASE_PASSWORD_FILE, AUDITFLOW_MONGO_URI_FILE,
// AUDITFLOW_NATS_URL_FILE, AWS_SHARED_CREDENTIALS_FILE,
// AWS_WEB_IDENTITY_TOKEN_FILE). Read each with [FileSecrets].
func SecretFiles(environ []string) []string {
	var out []string
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || value == "" {
			continue
		}
		n := strings.ToUpper(name)
		stem, isFile := strings.CutSuffix(n, "_FILE")
		switch {
		case strings.HasSuffix(n, "_CREDS"), strings.HasSuffix(n, "_NKEY"), strings.HasSuffix(n, "_TLS_KEY"),
			isFile && (SecretKey(stem) || strings.HasSuffix(stem, "_KEY") || strings.HasSuffix(stem, "_URI") || strings.HasSuffix(stem, "_URL")):
			out = append(out, value)
		}
	}
	return out
}

var (
	// nkeySeed is an nkey seed: S, the key type, base32.
	nkeySeed = regexp.MustCompile(`\bS[A-Z][A-Z2-7]{54,62}\b`)
	// jwt is a JSON Web Token (a NATS user JWT in a .creds file).
	jwt = regexp.MustCompile(`\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+`)
	// keyValue is a "name = value" or "name: value" line of a config
	// file (INI, YAML, .env, AWS credentials).
	keyValue = regexp.MustCompile(`(?m)^\s*(?:export\s+)?([A-Za-z0-9_.-]+)\s*[=:]\s*(.+?)\s*$`)
)

// FileSecrets returns the secrets in the contents of a secret file: a
// one-line file whole (a password, token or URI file) with its URI
// credentials; the nkey seeds and JWTs of a NATS .creds or seed file; the
// values of credential-named keys of a config file (an AWS credentials
// file); the URL credentials of each line; and the lines of a PEM private
// key.
func FileSecrets(content string) []string {
	var out []string
	t := strings.TrimSpace(content)
	if t == "" {
		return nil
	}
	if !strings.Contains(t, "\n") {
		out = append(out, t)
	}
	out = append(out, nkeySeed.FindAllString(content, -1)...)
	out = append(out, jwt.FindAllString(content, -1)...)
	for _, m := range keyValue.FindAllStringSubmatch(content, -1) {
		if SecretKey(m[1]) {
			out = append(out, strings.Trim(m[2], `"'`))
		}
	}
	inKey := false
	for line := range strings.Lines(content) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "-----BEGIN") && strings.Contains(line, "PRIVATE KEY"):
			inKey = true
		case strings.HasPrefix(line, "-----END"):
			inKey = false
		case inKey && line != "" && !strings.Contains(line, ":"): // not a PEM header
			out = append(out, line)
		case strings.Contains(line, "@") || strings.Contains(line, "://"):
			out = append(out, Secrets(line)...)
		}
	}
	return out
}

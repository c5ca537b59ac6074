package redact_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/redact"
)

// TestSecretKey: names are judged by their words, so the credentials'
// names are found however they are spelt, and words that merely contain a
// credential's word are not.
func TestSecretKey(t *testing.T) {
	for _, name := range []string{
		"DB_PASS", "STRIPE_KEY", "SMTP_AUTH", "MYSQL_PWD", "GITHUB_TOKEN", "TLS_CERT", "API_KEY", "apiKey", "api-key",
		"X-API-KEY", "APIKey", "password", "Password", "PASSWORD2", "DBPASSWORD", "mysqlpwd", "clientSecret",
		"client_secret", "SECRET_KEY_BASE", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PRIVATE_KEY",
		"ssh_private_key", "SIGNING_KEY", "Authorization", "X-Amz-Signature", "X-Amz-Security-Token",
		"tlsCertificateKeyFilePassword", "sslPassword", "key", "sig", "auth", "pass", "pwd", "Set-Cookie",
		"db.password", "--password", "S3KEY", "refresh_token", "accessToken", "NPM_AUTH_TOKEN", "LICENSE_KEY",
	} {
		if !redact.SecretKey(name) {
			t.Errorf("SecretKey(%q) = false, want true", name)
		}
	}
	for _, name := range []string{
		"KEYBOARD", "MONKEY", "PASSAGE", "AUTHOR", "BYPASS", "TOKENIZER", "COMPASS", "SECRETARY", "AUTH_MECHANISM",
		"authMechanism", "authSource", "KEY_ID", "AWS_ACCESS_KEY_ID", "PASSWORD_FILE", "TOKEN_TYPE", "token_url",
		"SECRET_NAME", "PATH", "HOME", "USER", "AUDITFLOW_NATS_NKEY", "tlsCertificateKeyFile", "replicaSet",
		"KEY_PATH", "AUTH_USER", "keyboard_layout", "authority", "", "_", "2026-11-29T09",
	} {
		if redact.SecretKey(name) {
			t.Errorf("SecretKey(%q) = true, want false", name)
		}
	}
}

// TestOutputMaskerForms: a credential is masked by its form, though the
// masker was never told its value — in the shapes commands print them —
// and what only resembles one is left as it is.
func TestOutputMaskerForms(t *testing.T) {
	m := redact.NewOutputMasker()
	for _, tc := range []struct{ in, want string }{
		{"DB_PASS=hunter22", "DB_PASS=***"},
		{"export DB_PASS=\"hunter 22\"", "export DB_PASS=\"***\""},
		{"STRIPE_KEY=sk_live abc def", "STRIPE_KEY=***"}, // env: the value runs to the line's end
		{"+ echo 'SMTP_AUTH=plain-login-pw' done", "+ echo 'SMTP_AUTH=***' done"},
		{`{"user":"bob","password":"hunter22","n":1}`, `{"user":"bob","password":"***","n":1}`},
		{`{"password": "hun\"ter22", "b": 2}`, `{"password": "***", "b": 2}`},
		{`"api_key":"abcd1234"`, `"api_key":"***"`},
		{`{"pin_secret": 12345678}`, `{"pin_secret": ***}`},
		{`{'password': 'hunter22'}`, `{'password': '***'}`},
		{`{"password": true, "auth": null, "token": ""}`, `{"password": true, "auth": null, "token": ""}`},
		{`{"credentials": {"user": "bob", "pass": "hunter22"}}`, `{"credentials": {"user": "bob", "pass": "***"}}`},
		{`log {\"password\":\"hunter22\",\"x\":1}`, `log {\"password\":\"***\",\"x\":1}`},
		{"dsn postgres://app:hunter22@db:5432/x?sslmode=require", "dsn postgres://app:***@db:5432/x?sslmode=require"},
		{"GET https://api.example.com/v1?token=abcd1234&x=1 200", "GET https://api.example.com/v1?token=***&x=1 200"},
		{`{"url":"https://u:hunter22@h/"}`, `{"url":"https://u:***@h/"}`},
		{"DATABASE_URL=mysql://root:hunter22@db/app", "DATABASE_URL=mysql://root:***@db/app"},
		{"level=INFO msg=connect password=hunter22 user=bob", "level=INFO msg=connect password=*** user=bob"},
		{"Authorization: Bearer abc.def.ghi", "Authorization: ***"},
		{"db:\n  password: hunter22\n  user: bob", "db:\n  password: ***\n  user: bob"},
		{"  - api_key: abcd1234", "  - api_key: ***"},
		{"password := \"hunter22\"", "password := \"***\""},
		{"mysql --password=hunter22 -u bob", "mysql --password=*** -u bob"},
		{"a\r\nDB_PASS=hunter22\r\nb", "a\r\nDB_PASS=***\r\nb"},
		{"error: invalid token: abcd1234 expired", "error: invalid token: *** expired"},
		// Left alone.
		{"KEYBOARD=us AUTHOR=alice MONKEY=banana1 PASSAGE=north", "KEYBOARD=us AUTHOR=alice MONKEY=banana1 PASSAGE=north"},
		{"PWD=/home/alice/src\nOLDPWD=/home/alice", "PWD=/home/alice/src\nOLDPWD=/home/alice"},
		{"AUDITFLOW_LOCK_TOKEN=123456", "AUDITFLOW_LOCK_TOKEN=123456"},
		{"DB_PASS=abc", "DB_PASS=abc"}, // shorter than MinLen
		{"PASSWORD_FILE=/run/secrets/db KEY_ID=k-1234", "PASSWORD_FILE=/run/secrets/db KEY_ID=k-1234"},
		{"TLS_CERT=" + os.TempDir() + "\nTLS_CERT=/no/such/file.pem", "TLS_CERT=" + os.TempDir() + "\nTLS_CERT=***"}, // a path that exists is not the secret
		{"ssh://git@github.com/acme/app.git", "ssh://git@github.com/acme/app.git"},
		{`if [ "$PASSWORD" = "" ]; then x == password; fi`, `if [ "$PASSWORD" = "" ]; then x == password; fi`},
		{"2026-11-29T09:23:21Z INFO migrated 1000 rows", "2026-11-29T09:23:21Z INFO migrated 1000 rows"},
		{"time: 12:30:00, key:", "time: 12:30:00, key:"},
	} {
		if got := m.String(tc.in); got != tc.want {
			t.Errorf("String(%q)\n = %q\nwant %q", tc.in, got, tc.want)
		}
	}
	// Values the masker knows are masked as well, and overlaps become one.
	m = redact.NewOutputMasker("s3cr3t-value")
	if got, want := m.String(`x s3cr3t-value {"token": "pre-s3cr3t-value-post"}`), `x *** {"token": "***"}`; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if redact.NewMasker().String("DB_PASS=hunter22") != "DB_PASS=hunter22" {
		t.Error("NewMasker masks forms: it is for logs, whose attributes may look like credentials")
	}
}

// formsText is output with a credential in each form and in a known
// value, for the writer tests.
const formsText = "start\nDB_PASS=hunter22-a\n{\"password\": \"hunter22-b\", \"n\": 1}\r\n" +
	"+ curl https://u:hunter22-c@h/x?token=hunter22-d\nplain line\nknown s3cr3t-value; {\\\"api_key\\\":\\\"hunter22-e\\\"}\n" +
	"Authorization: Bearer hunter22-f\nno end password=hunter22-g"

var formsSecrets = []string{"hunter22-a", "hunter22-b", "hunter22-c", "hunter22-d", "s3cr3t-value", "hunter22-e", "hunter22-f", "hunter22-g"}

// TestOutputWriterMasksFormsAcrossWrites writes formsText in every split:
// no credential shows at any point, and the output is String's.
func TestOutputWriterMasksFormsAcrossWrites(t *testing.T) {
	m := redact.NewOutputMasker("s3cr3t-value")
	want := m.String(formsText)
	for _, s := range formsSecrets {
		if strings.Contains(want, s) {
			t.Fatalf("String leaves %q in:\n%s", s, want)
		}
	}
	for size := 1; size <= len(formsText); size++ {
		var out bytes.Buffer
		w := m.Writer(&out)
		for i := 0; i < len(formsText); i += size {
			if _, err := io.WriteString(w, formsText[i:min(i+size, len(formsText))]); err != nil {
				t.Fatal(err)
			}
			if leaked(out.String(), formsSecrets) {
				t.Fatalf("size %d: leaked: %q", size, out.String())
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if out.String() != want {
			t.Fatalf("size %d: %q, want %q", size, out.String(), want)
		}
	}
}

// TestOutputWriterLongLine: a line longer than MaxLine (minified JSON,
// say) is passed on in parts, never cutting a member's name from its
// value.
func TestOutputWriterLongLine(t *testing.T) {
	var line strings.Builder
	for i := 0; line.Len() < 3*redact.MaxLine; i++ {
		fmt.Fprintf(&line, `{"id":%d,"note":"%s","password":"hunter22-%d"},`, i, strings.Repeat("x", i%200), i)
	}
	text := "[" + line.String() + "]\n"
	m := redact.NewOutputMasker()
	for _, size := range []int{1000, 4096, 32 << 10} {
		var out bytes.Buffer
		w := m.Writer(&out)
		passed := false
		for i := 0; i < len(text); i += size {
			_, _ = io.WriteString(w, text[i:min(i+size, len(text))])
			passed = passed || out.Len() > 0 && i+size < len(text)
		}
		if !passed {
			t.Errorf("size %d: nothing passed on before the line's end", size)
		}
		_ = w.Flush()
		if strings.Contains(out.String(), "hunter22") || out.String() != m.String(text) {
			t.Errorf("size %d: a password shows, or the output is not String's", size)
		}
	}
}

func leaked(s string, secrets []string) bool {
	for _, sec := range secrets {
		if strings.Contains(s, sec) {
			return true
		}
	}
	return false
}

// BenchmarkOutputWriter is what masking costs a chatty command's recorded
// output: lines with timestamps (colons), key=value pairs and JSON through
// a masker of 40 secrets, masking the values only (NewMasker, as
// BenchmarkWriter) and also the forms (NewOutputMasker): the ratio is what
// looking for credentials by their form costs.
//
//	go test ./internal/redact -run XXX -bench Writer
func BenchmarkOutputWriter(b *testing.B) {
	var secrets []string
	for i := range 40 {
		secrets = append(secrets, fmt.Sprintf("secret-value-%02d-xyz", i))
	}
	lines := "2026-11-29T09:23:21Z INFO migrated 1000 rows of table users in 12ms\n" +
		"level=info msg=\"batch done\" rows=1000 took=12ms table=users user=bob\n" +
		`{"time":"2026-11-29T09:23:21Z","level":"info","rows":1000,"table":"users","password":"hunter22"}` + "\n"
	chunk := []byte(strings.Repeat(lines, 32<<10/len(lines)))
	for name, m := range map[string]*redact.Masker{"values": redact.NewMasker(secrets...), "forms": redact.NewOutputMasker(secrets...)} {
		b.Run(name, func(b *testing.B) {
			w := m.Writer(io.Discard)
			b.SetBytes(int64(len(chunk)))
			for b.Loop() {
				_, _ = w.Write(chunk)
			}
		})
	}
}

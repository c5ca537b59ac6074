package redact_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/redact"
)

// TestURI covers every URI kind the commands take: what must go, and what
// must stay for the URI to remain useful in an error or a log.
func TestURI(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		secrets        []string // Secrets must return at least these
	}{
		{"nats password", "nats://auditflow:pw-1234@a:4222", "nats://auditflow:redacted@a:4222", []string{"pw-1234"}},
		{"nats token", "tls://tok-5678@c:4222", "tls://redacted@c:4222", []string{"tok-5678"}},
		{"nats list", "nats://u:pw-1234@a:4222, nats://b:4222,tls://tok-5678@c:4222",
			"nats://u:redacted@a:4222, nats://b:4222,tls://redacted@c:4222", []string{"pw-1234", "tok-5678"}},
		{"nats schemeless list", "u:pw-1234@a:4222,tok-5678@b", "u:redacted@a:4222,redacted@b", []string{"pw-1234", "tok-5678"}},
		{"nats no credentials", "nats://a:4222,nats://b:4222", "nats://a:4222,nats://b:4222", nil},
		{"websocket", "wss://u:pw-1234@ws.example.com/path", "wss://u:redacted@ws.example.com/path", []string{"pw-1234"}},
		{"bad escape", "nats://u:pw%zz1234@a:4222", "nats://u:redacted@a:4222", []string{"pw%zz1234"}},
		{"bad port", "nats://u:pw-1234@a:port", "nats://u:redacted@a:port", []string{"pw-1234"}},
		{"unescaped @ and / in password", "nats://u:p@ss/w0rd@a:4222", "nats://u:redacted@a:4222", []string{"p@ss/w0rd"}},
		{"escaped password", "mongodb://u:p%40ss%2Fw0rd@db:27017", "mongodb://u:redacted@db:27017", []string{"p%40ss%2Fw0rd", "p@ss/w0rd"}},
		{"mongo replica set", "mongodb://auditor:hunter22@db1:27017,db2:27017/audit?replicaSet=rs0&w=majority",
			"mongodb://auditor:redacted@db1:27017,db2:27017/audit?replicaSet=rs0&w=majority", []string{"hunter22"}},
		{"mongo srv", "mongodb+srv://auditor:hunter22@cluster0.example.net/", "mongodb+srv://auditor:redacted@cluster0.example.net/", []string{"hunter22"}},
		{"mongo x509 user stays", "mongodb://CN=client,O=acme@db/?authMechanism=MONGODB-X509", "mongodb://CN=client,O=acme@db/?authMechanism=MONGODB-X509", nil},
		{"mongo tls key password", "mongodb://db/?tls=true&tlsCertificateKeyFile=/k.pem&tlsCertificateKeyFilePassword=kpw-999",
			"mongodb://db/?tls=true&tlsCertificateKeyFile=/k.pem&tlsCertificateKeyFilePassword=redacted", []string{"kpw-999"}},
		{"mongo aws session token", "mongodb://AKIAEXAMPLE:awsSecret1@db/?authMechanism=MONGODB-AWS&authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:sess-tok-1",
			"mongodb://AKIAEXAMPLE:redacted@db/?authMechanism=MONGODB-AWS&authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:redacted",
			[]string{"awsSecret1", "sess-tok-1"}},
		{"mongo aws session token escaped", "mongodb://db/?authMechanismProperties=AWS_SESSION_TOKEN%3Asess%2Btok",
			"mongodb://db/?authMechanismProperties=AWS_SESSION_TOKEN%3Aredacted", []string{"sess%2Btok", "sess+tok"}},
		{"mongo legacy ; separator", "mongodb://db/?ssl=true;sslPassword=kpw-999", "mongodb://db/?ssl=true;sslPassword=redacted", []string{"kpw-999"}},
		{"couchbase", "couchbases://u:cbpw-1@cb1,cb2?network=external", "couchbases://u:redacted@cb1,cb2?network=external", []string{"cbpw-1"}},
		{"dynamodb presigned", "https://dynamodb.local:8000/?X-Amz-Security-Token=sts-tok-1&X-Amz-Signature=sig-1234&region=x",
			"https://dynamodb.local:8000/?X-Amz-Security-Token=redacted&X-Amz-Signature=redacted&region=x", []string{"sts-tok-1", "sig-1234"}},
		{"fragment kept", "http://h/?token=tok-5678#frag", "http://h/?token=redacted#frag", []string{"tok-5678"}},
		{"plain path", "auditflow.db", "auditflow.db", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := redact.URI(tc.in); got != tc.want {
				t.Errorf("URI(%q)\n = %q\nwant %q", tc.in, got, tc.want)
			}
			got := redact.Secrets(tc.in)
			for _, s := range tc.secrets {
				if !slices.Contains(got, s) {
					t.Errorf("Secrets(%q) = %q, missing %q", tc.in, got, s)
				}
				if strings.Contains(redact.URI(tc.in), s) {
					t.Errorf("URI(%q) shows %q", tc.in, s)
				}
			}
			if tc.secrets == nil && len(got) != 0 {
				t.Errorf("Secrets(%q) = %q, want none", tc.in, got)
			}
		})
	}
}

// TestURIOfUnparseable: whatever url.Parse makes of it, the password is
// not shown.
func TestURIOfUnparseable(t *testing.T) {
	for _, in := range []string{"nats://u:canary%zz@h:1", "nats://u:canary@h:notaport", "nats://u:canary@[::1", "mongodb://u:canary@h h/"} {
		if _, err := url.Parse(in); err == nil {
			t.Errorf("%q parses; pick an unparseable case", in)
		}
		if got := redact.URI(in); strings.Contains(got, "canary") {
			t.Errorf("URI(%q) = %q", in, got)
		}
		if got := redact.NewMasker(redact.Secrets(in)...).String(in); strings.Contains(got, "canary") {
			t.Errorf("masked %q = %q", in, got)
		}
	}
}

func TestMasker(t *testing.T) {
	m := redact.NewMasker("hunter22", "abc", "", "hunter22", "22-overlap")
	for in, want := range map[string]string{
		"pw=hunter22 and abc":       "pw=*** and abc", // abc: below MinLen
		"hunter22hunter22":          "******",
		"hunter22-overlap":          "***", // overlapping secrets: one mask over both
		"nothing here":              "nothing here",
		"x hunter22\ny 22-overlap.": "x ***\ny ***.",
	} {
		if got := m.String(in); got != want {
			t.Errorf("String(%q) = %q, want %q", in, got, want)
		}
	}
	var nilMasker *redact.Masker
	if nilMasker.String("hunter22") != "hunter22" || redact.NewMasker("a", "") != nil {
		t.Error("nil Masker")
	}
	base := errors.New("connect: password hunter22 refused")
	err := m.Err(base)
	if strings.Contains(err.Error(), "hunter22") || !errors.Is(err, base) {
		t.Errorf("Err: %v", err)
	}
}

// TestWriterMasksAcrossWrites writes output in every possible split, one
// byte at a time included: a secret split across writes is still masked,
// and nothing else is lost or held after Flush.
func TestWriterMasksAcrossWrites(t *testing.T) {
	m := redact.NewMasker("s3cr3t-value", "tok-42-x")
	text := "start s3cr3t-value; s3cr3t-valu; tok-42-xs3cr3t-value end s3cr3t"
	want := m.String(text)
	for size := 1; size <= len(text); size++ {
		var out bytes.Buffer
		w := m.Writer(&out)
		for i := 0; i < len(text); i += size {
			if _, err := io.WriteString(w, text[i:min(i+size, len(text))]); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(out.String(), "s3cr3t-value") || strings.Contains(out.String(), "tok-42-x") {
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
	// What cannot start a secret is passed on at once.
	var out bytes.Buffer
	w := m.Writer(&out)
	_, _ = io.WriteString(w, "line one\n")
	if out.String() != "line one\n" {
		t.Fatalf("held back %q", "line one\n")
	}
}

func TestEnvSecrets(t *testing.T) {
	env := []string{
		"PATH=/usr/bin", "HOME=/home/x", "PWD=/home/x/src", "OLDPWD=/home/x", "DB_PWD=db-pwd-1",
		"AUDITFLOW_NATS_URL=nats://auditflow:nats-pw-1@n1:4222,nats://n2:4222",
		"AUDITFLOW_MONGO_URI=mongodb://u:mongo-pw-1@db/?tlsCertificateKeyFilePassword=key-pw-1",
		"AUDITFLOW_COUCHBASE_PASSWORD=cb-pw-1",
		"AWS_SECRET_ACCESS_KEY=aws-secret-1", "AWS_SESSION_TOKEN=aws-sess-1", "GITHUB_TOKEN=gh-tok-1",
		"AUDITFLOW_COUCHBASE_PASSWORD_FILE=/run/secrets/cb", "AUDITFLOW_LOCK_TOKEN=123456",
		"AUDITFLOW_NATS_CREDS=/run/secrets/creds", "AUDITFLOW_NATS_NKEY=/run/secrets/seed", "AUDITFLOW_MONGO_URI_FILE=/run/secrets/mongo",
		"AWS_SHARED_CREDENTIALS_FILE=/home/x/.aws/credentials", "AUDITFLOW_SQLITE_PATH=/data/audit.db",
		"DB_PASS=db-pass-1", "STRIPE_KEY=stripe-1", "SMTP_AUTH=smtp-auth-1", "MYSQL_PWD=mysql-1", "TLS_CERT=tls-cert-1",
		"KEYBOARD=us-intl", "AUTHOR=alice-b", "PASSAGE=north-1", "BASIC_AUTH=true", "CA_CERT=" + os.TempDir(),
	}
	got := redact.EnvSecrets(env)
	for _, s := range []string{"nats-pw-1", "mongo-pw-1", "key-pw-1", "cb-pw-1", "aws-secret-1", "aws-sess-1", "gh-tok-1", "db-pwd-1",
		"db-pass-1", "stripe-1", "smtp-auth-1", "mysql-1", "tls-cert-1"} {
		if !slices.Contains(got, s) {
			t.Errorf("EnvSecrets: missing %q in %q", s, got)
		}
	}
	for _, s := range []string{"/usr/bin", "/run/secrets/cb", "123456", "/home/x/src", "/home/x", "us-intl", "alice-b", "north-1", "true", os.TempDir()} {
		if slices.Contains(got, s) {
			t.Errorf("EnvSecrets: %q is no secret", s)
		}
	}
	files := redact.SecretFiles(env)
	want := []string{"/run/secrets/cb", "/run/secrets/creds", "/run/secrets/seed", "/run/secrets/mongo", "/home/x/.aws/credentials"}
	if !slices.Equal(files, want) {
		t.Errorf("SecretFiles = %q, want %q", files, want)
	}
}

const (
	testSeed = "SUAMK2FG4MI6UE3ACF3FK3OIQBCEIEZV7NSWFFEW63UXMRLFM2XLAXK4GY"
	testJWT  = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJQUjVNRk1SVSJ9.c2lnbmF0dXJlLXBhcnQ"
)

func TestFileSecrets(t *testing.T) {
	creds := "-----BEGIN NATS USER JWT-----\n" + testJWT + "\n------END NATS USER JWT------\n\n" +
		"************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\n\n" +
		"-----BEGIN USER NKEY SEED-----\n" + testSeed + "\n------END USER NKEY SEED------\n"
	awsCreds := "[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = aws-secret-1\naws_session_token=\"aws-sess-1\"\n"
	pem := "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"
	for name, tc := range map[string]struct {
		content string
		want    []string
	}{
		"password file": {"cb-pw-1\n", []string{"cb-pw-1"}},
		"uri file":      {"mongodb://u:mongo-pw-1@db/\n", []string{"mongodb://u:mongo-pw-1@db/", "mongo-pw-1"}},
		"seed file":     {testSeed + "\n", []string{testSeed}},
		"creds file":    {creds, []string{testSeed, testJWT}},
		"aws":           {awsCreds, []string{"aws-secret-1", "aws-sess-1"}},
		"pem key":       {pem, []string{"MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "BKcwggSjAgEAAoIBAQC7"}},
	} {
		got := redact.FileSecrets(tc.content)
		for _, s := range tc.want {
			if !slices.Contains(got, s) {
				t.Errorf("%s: missing %q in %q", name, s, got)
			}
		}
		if slices.Contains(got, "AKIAEXAMPLE") || slices.Contains(got, "[default]") {
			t.Errorf("%s: %q", name, got)
		}
	}
}

// TestFlagDefaultRedacted: -h shows a default taken from the environment
// without its password, and the flag still holds the real value.
func TestFlagDefaultRedacted(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var help bytes.Buffer
	fs.SetOutput(&help)
	var u string
	redact.StringVar(fs, &u, "url", "nats://u:pw-1234@h:4222", "server `URL`")
	fs.PrintDefaults()
	if strings.Contains(help.String(), "pw-1234") || !strings.Contains(help.String(), "nats://u:redacted@h:4222") {
		t.Fatalf("help:\n%s", help.String())
	}
	if u != "nats://u:pw-1234@h:4222" {
		t.Fatalf("value %q", u)
	}
	if err := fs.Parse([]string{"--url", "nats://v:pw-5678@h"}); err != nil || u != "nats://v:pw-5678@h" {
		t.Fatalf("Set: %q %v", u, err)
	}
}

// BenchmarkWriter is what masking costs a chatty command: 32 KiB writes
// of log lines through a Masker of 40 secrets (a runner's environment).
//
//	go test ./internal/redact -run XXX -bench Writer
func BenchmarkWriter(b *testing.B) {
	var secrets []string
	for i := range 40 {
		secrets = append(secrets, fmt.Sprintf("secret-value-%02d-xyz", i))
	}
	m := redact.NewMasker(secrets...)
	chunk := []byte(strings.Repeat("2026-11-29T09:23:21Z INFO migrated 1000 rows of table users in 12ms\n", 32<<10/68))
	w := m.Writer(io.Discard)
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		_, _ = w.Write(chunk)
	}
}

package natsconn_test

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/internal/natstest"
)

// A user nkey made for these tests, and its public key.
const (
	testSeed   = "SUAM4DPLPBRYA32SQRAZATJVHUMFGGVRZPLGAYUEXMSRJHMBPF6M7V5DBY"
	testPublic = "UCSLQHPY55FJZZ6A4J4EEQWDLUFAX6QK3SMRWTVC4LOMTQIDDRFDKKM6"
)

func TestRedact(t *testing.T) {
	got := natsconn.Redact("nats://user:s3cret@a:4222,nats://b:4222,tls://tok3n@c:4222")
	if strings.Contains(got, "s3cret") || strings.Contains(got, "tok3n") || !strings.Contains(got, "nats://b:4222") {
		t.Fatalf("Redact = %q", got)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestValidate(t *testing.T) {
	seed := writeFile(t, "user.nk", testSeed+"\n")
	notSeed := writeFile(t, "bad.nk", "hunter2-not-a-seed\n")
	creds := writeFile(t, "user.creds", "x")
	urlFile := writeFile(t, "url", "nats://auditflow:pw-in-file@h:4222\n")
	for name, c := range map[string]natsconn.Config{
		"no url":             {},
		"cert, no key":       {URL: "nats://x", TLSCert: "c.pem"},
		"missing creds":      {URL: "nats://x", Creds: "/nonexistent/user.creds"},
		"creds and nkey":     {URL: "nats://x", Creds: creds, Nkey: seed},
		"missing nkey":       {URL: "nats://x", Nkey: "/nonexistent/user.nk"},
		"not a seed":         {URL: "nats://x", Nkey: notSeed},
		"url and url file":   {URL: "nats://other:4222", URLFile: urlFile},
		"missing url file":   {URLFile: "/nonexistent/url"},
		"unparseable url":    {URL: "nats://auditflow:hunter2-pw@h:notaport"},
		"bad escape in list": {URL: "nats://a:4222,nats://auditflow:hunter2%zz@h:4222"},
	} {
		err := c.Validate()
		if !errors.Is(err, natsconn.ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: the error shows the secret: %v", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
	for name, c := range map[string]natsconn.Config{
		"url":                   {URL: "nats://x"},
		"nkey":                  {URL: "nats://x", Nkey: seed},
		"url file":              {URLFile: urlFile},
		"url file, default url": {URL: nats.DefaultURL, URLFile: urlFile},
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestHelpHidesSecrets: -h shows where a setting comes from, never the
// password in it.
func TestHelpHidesSecrets(t *testing.T) {
	t.Setenv("AUDITFLOW_NATS_URL", "nats://auditflow:hunter2-pw@n1:4222,tls://hunter2-tok@n2:4222")
	var c natsconn.Config
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var help bytes.Buffer
	fs.SetOutput(&help)
	c.RegisterFlags(fs)
	fs.PrintDefaults()
	if strings.Contains(help.String(), "hunter2") || !strings.Contains(help.String(), "nats://auditflow:redacted@n1:4222") {
		t.Fatalf("help:\n%s", help.String())
	}
	if c.URL != "nats://auditflow:hunter2-pw@n1:4222,tls://hunter2-tok@n2:4222" {
		t.Fatalf("URL = %q", c.URL)
	}
}

func TestSecrets(t *testing.T) {
	c := natsconn.Config{
		URL:  "nats://auditflow:pw-in-url@h:4222,tls://tok-in-url@h2",
		Nkey: writeFile(t, "user.nk", testSeed+"\n"),
	}
	got := c.Secrets()
	for _, s := range []string{"pw-in-url", "tok-in-url", testSeed} {
		if !slices.Contains(got, s) {
			t.Errorf("Secrets = %q, missing %q", got, s)
		}
	}
	c = natsconn.Config{URL: nats.DefaultURL, URLFile: writeFile(t, "url", "nats://u:pw-in-file@h\n")}
	if got := c.Secrets(); !slices.Contains(got, "pw-in-file") {
		t.Errorf("Secrets = %q, missing the URL file's password", got)
	}
}

// TestConnect connects to servers that require a password, an nkey, or a
// token, each in the way an operator would configure it, and checks that a
// refused connection's error names no secret.
func TestConnect(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		Users: []*server.User{{Username: "auditflow", Password: "hunter2-pw"}},
		Nkeys: []*server.NkeyUser{{Nkey: testPublic}}}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	addr := strings.TrimPrefix(s.ClientURL(), "nats://")
	log := natstest.Logger(t)
	for name, c := range map[string]natsconn.Config{
		"password in url":      {URL: "nats://auditflow:hunter2-pw@" + addr},
		"password in url file": {URLFile: writeFile(t, "url", "nats://auditflow:hunter2-pw@"+addr+"\n")},
		"nkey seed":            {URL: "nats://" + addr, Nkey: writeFile(t, "user.nk", testSeed+"\n")},
	} {
		nc, err := natsconn.Connect(c, log)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		nc.Close()
	}
	_, err = natsconn.Connect(natsconn.Config{URL: "nats://auditflow:hunter2-wrong@" + addr}, log)
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "auditflow:redacted@") {
		t.Fatalf("wrong password: %v", err)
	}
	t.Log(err)
}

// TestPermissionViolationIsNotPrintedRaw: nats.go's default error handler
// prints a refused publish on stderr ("nats: permissions violation …"),
// ahead of the command's own message; Connect's handler sends it to the
// log at debug instead (natsperm reports it as the request's error).
func TestPermissionViolationIsNotPrintedRaw(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		Users: []*server.User{{Username: "ro", Password: "ro-pw",
			Permissions: &server.Permissions{Publish: &server.SubjectPermission{Allow: []string{"allowed.>"}}}}}}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	// What nats.go's default handler would print goes to os.Stderr.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = w
	defer func() { os.Stderr = stderr }()

	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))
	nc, err := natsconn.Connect(natsconn.Config{URL: "nats://ro:ro-pw@" + strings.TrimPrefix(s.ClientURL(), "nats://")}, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("denied.subject", []byte("x")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !errors.Is(nc.LastError(), nats.ErrPermissionViolation) && time.Now().Before(deadline) {
		_ = nc.Flush()
		time.Sleep(10 * time.Millisecond)
	}
	nc.Close() // after the async handlers have run
	os.Stderr = stderr
	_ = w.Close()
	raw, _ := io.ReadAll(r)
	if !errors.Is(nc.LastError(), nats.ErrPermissionViolation) {
		t.Fatalf("no violation reported: %v", nc.LastError())
	}
	if len(raw) != 0 {
		t.Fatalf("printed on stderr: %q", raw)
	}
	if !strings.Contains(logged.String(), "level=DEBUG") || !strings.Contains(logged.String(), "denied.subject") {
		t.Fatalf("the violation is not in the debug log:\n%s", logged.String())
	}
}

package storeflags_test

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/storeflags"
	"github.com/auditflow/auditflow/stores"
)

func parse(t *testing.T, args ...string) *storeflags.Config {
	t.Helper()
	var c storeflags.Config
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return &c
}

func TestSecretsStayOutOfDescriptions(t *testing.T) {
	t.Setenv("AUDITFLOW_MONGO_URI", "mongodb://auditor:hunter2@db1:27017,db2:27017/?replicaSet=rs0")
	c := parse(t, "--store", "mongo")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if d := c.Describe(); strings.Contains(d, "hunter2") || !strings.Contains(d, "auditor") {
		t.Fatalf("Describe = %q", d)
	}
	t.Setenv("AUDITFLOW_COUCHBASE_PASSWORD", "s3cr3t-pw")
	c = parse(t, "--store", "couchbase", "--couchbase-connstr", "couchbase://cb", "--couchbase-bucket", "audit", "--couchbase-user", "auditor")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if d := c.Describe(); strings.Contains(d, "s3cr3t") {
		t.Fatalf("Describe = %q", d)
	}
}

func TestDefaults(t *testing.T) {
	c := parse(t)
	if c.Kind != "sqlite" || c.Mongo.Database != "auditflow" || c.Mongo.WriteConcern != "majority" || !c.Mongo.Journal ||
		c.Mongo.ReadConcern != "majority" || c.Mongo.ReadPreference != "primary" || c.Dynamo.Billing != "on-demand" ||
		c.Couchbase.Durability != "majority" {
		t.Fatalf("defaults: %+v", c)
	}
}

// TestHelpHidesSecrets: -h shows the defaults taken from the environment
// without their credentials.
func TestHelpHidesSecrets(t *testing.T) {
	t.Setenv("AUDITFLOW_MONGO_URI", "mongodb://auditor:hunter2-pw@db/")
	t.Setenv("AUDITFLOW_COUCHBASE_CONNSTR", "couchbases://auditor:hunter2-pw@cb")
	t.Setenv("AUDITFLOW_DYNAMO_ENDPOINT", "https://ddb.local/?X-Amz-Security-Token=hunter2-tok")
	t.Setenv("AUDITFLOW_COUCHBASE_PASSWORD", "hunter2-cb")
	var c storeflags.Config
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var help strings.Builder
	fs.SetOutput(&help)
	c.RegisterFlags(fs)
	fs.PrintDefaults()
	if strings.Contains(help.String(), "hunter2") || !strings.Contains(help.String(), "couchbases://auditor:redacted@cb") {
		t.Fatalf("help:\n%s", help.String())
	}
}

func TestMongoURIFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mongo-uri")
	if err := os.WriteFile(path, []byte("mongodb://auditor:hunter2-pw@db/?tlsCertificateKeyFilePassword=hunter2-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := parse(t, "--store", "mongo", "--mongo-uri-file", path)
	for range 2 { // Open validates again
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	if c.Mongo.URI != "mongodb://auditor:hunter2-pw@db/?tlsCertificateKeyFilePassword=hunter2-key" {
		t.Fatalf("URI %q", c.Mongo.URI)
	}
	if d := c.Describe(); strings.Contains(d, "hunter2") {
		t.Fatalf("Describe = %q", d)
	}
	if s := c.Secrets(); !slices.Contains(s, "hunter2-pw") || !slices.Contains(s, "hunter2-key") {
		t.Fatalf("Secrets = %q", s)
	}
	if err := parse(t, "--store", "mongo", "--mongo-uri-file", path, "--mongo-uri", "mongodb://db/").Validate(); err == nil {
		t.Fatal("both --mongo-uri and --mongo-uri-file accepted")
	}
	t.Setenv("AUDITFLOW_MONGO_URI", "mongodb://db/")
	if err := parse(t, "--store", "mongo", "--mongo-uri-file", path).Validate(); err == nil {
		t.Fatal("both AUDITFLOW_MONGO_URI and --mongo-uri-file accepted")
	}
}

// TestErrorsHideSecrets: a URI the driver cannot parse is not echoed with
// its password, whatever the driver's error quotes.
func TestErrorsHideSecrets(t *testing.T) {
	for _, uri := range []string{"mongodb://auditor:hunter2-pw@db:notaport/", "mongodb://auditor:hunter2%zz@db/",
		"mongodb://db/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:hunter2-tok,BOGUS"} {
		t.Setenv("AUDITFLOW_MONGO_URI", uri)
		c := parse(t, "--store", "mongo")
		_, _, err := c.Open(context.Background(), nil)
		if err == nil {
			t.Fatalf("%s: opened", uri)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error shows the secret: %v", err)
		}
		t.Log(err)
	}
	c := parse(t, "--store", "dynamodb", "--dynamo-endpoint", "https://u:hunter2-pw@ddb local/")
	if err := c.Validate(); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("dynamo endpoint: %v", err)
	}
}

// TestReadOnlyCreatesNothing: a read-only open of a missing SQLite file is
// ErrStoreMissing naming the path, with no file made; of an existing one
// it reads, refuses writes, and leaves the directory as it was.
func TestReadOnlyCreatesNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.db")
	c := parse(t, "--sqlite-path", path)
	c.ReadOnly = true
	if _, _, err := c.Open(ctx, nil); !errors.Is(err, storeflags.ErrStoreMissing) || !strings.Contains(err.Error(), path) {
		t.Fatalf("read-only open of a missing file = %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left %v", entries)
	}
	rw := parse(t, "--sqlite-path", path)
	st, closeStore, err := rw.Open(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	closeStore()
	before, _ := os.ReadDir(dir)
	st, closeStore, err = c.Open(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Issues(ctx, stores.IssueQuery{}); err != nil {
		t.Fatal(err)
	}
	if err := st.Reset(ctx); err == nil {
		t.Fatal("a read-only store accepted a write")
	}
	closeStore()
	if after, _ := os.ReadDir(dir); len(after) != len(before) {
		t.Fatalf("files before %v, after %v", before, after)
	}
	if ok, err := rw.ProbeWrite(ctx, nil); !ok || err != nil {
		t.Fatalf("ProbeWrite = %v, %v", ok, err)
	}
	if after, _ := os.ReadDir(dir); len(after) != len(before) {
		t.Fatalf("the write probe left files: before %v, after %v", before, after)
	}
}

// TestSQLiteOpenErrorNamesPathAndCause: SQLite's bare "unable to open
// database file (14)" becomes the path and the likely cause.
func TestSQLiteOpenErrorNamesPathAndCause(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no-such-dir", "audit.db")
	c := parse(t, "--sqlite-path", path)
	_, _, err := c.Open(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Open under a missing directory = %v", err)
	}
}

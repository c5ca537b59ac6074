package storeflags_test

import (
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/auditflow/auditflow/internal/storeflags"
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

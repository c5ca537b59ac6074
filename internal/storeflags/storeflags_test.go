package storeflags_test

import (
	"flag"
	"io"
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

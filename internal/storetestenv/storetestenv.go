// Package storetestenv opens every kind of audit store on the test servers
// that scripts/testservers.sh starts, for tests that must hold for all
// backends (verify, replay, the operator commands). A kind whose server is
// not configured is skipped, or fails under AUDITFLOW_REQUIRE_INTEGRATION=1.
package storetestenv

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/internal/natstest"
	"github.com/auditflow/auditflow/internal/storeflags"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/storetest"
)

// Config returns the storeflags configuration of a store of kind on the
// test servers, its names derived from ns, and sets the environment
// (secrets) it needs for the rest of the test.
func Config(t *testing.T, kind, ns string) storeflags.Config {
	t.Helper()
	var c storeflags.Config
	c.Kind = kind
	switch kind {
	case "sqlite":
		c.SQLite.Path = filepath.Join(t.TempDir(), "audit.db")
		c.SQLite.ChangeLog, c.SQLite.Issues, c.SQLite.Checkpoints = "changeLog", "issues", "checkpoints"
	case "mongo":
		t.Setenv("AUDITFLOW_MONGO_URI", storetest.ServerAddr(t, "AUDITFLOW_TEST_MONGO_URI"))
		c.Mongo.Database, c.Mongo.ChangeLog, c.Mongo.Issues, c.Mongo.Checkpoints = ns, "changeLog", "issues", "checkpoints"
		c.Mongo.WriteConcern, c.Mongo.Journal, c.Mongo.ReadConcern, c.Mongo.ReadPreference = "majority", true, "majority", "primary"
		c.Mongo.BatchSize = 40 // FerretDB hangs on update commands of 50 statements or more
	case "dynamodb":
		c.Dynamo.Endpoint = storetest.ServerAddr(t, "AUDITFLOW_TEST_DYNAMO_ENDPOINT")
		t.Setenv("AWS_ACCESS_KEY_ID", "test")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
		c.Dynamo.Region, c.Dynamo.TablePrefix, c.Dynamo.Billing, c.Dynamo.Concurrency = "us-east-1", ns+"_", "on-demand", 4
		c.Dynamo.ChangeLog, c.Dynamo.Issues, c.Dynamo.Checkpoints = "changeLog", "issues", "checkpoints"
	case "couchbase":
		c.Couchbase.ConnStr = storetest.ServerAddr(t, "AUDITFLOW_TEST_COUCHBASE_CONNSTR")
		t.Setenv("AUDITFLOW_COUCHBASE_PASSWORD", os.Getenv("AUDITFLOW_TEST_COUCHBASE_PASSWORD"))
		c.Couchbase.User, c.Couchbase.Bucket = os.Getenv("AUDITFLOW_TEST_COUCHBASE_USER"), os.Getenv("AUDITFLOW_TEST_COUCHBASE_BUCKET")
		c.Couchbase.Scope, c.Couchbase.Collection, c.Couchbase.Durability, c.Couchbase.Concurrency = "auditflow_test", ns, "majority", 32
	default:
		t.Fatalf("unknown store kind %q", kind)
	}
	return c
}

// Args is a Config as command-line flags, for testing the commands.
func Args(c storeflags.Config) []string {
	switch c.Kind {
	case "sqlite":
		return []string{"--store", "sqlite", "--sqlite-path", c.SQLite.Path}
	case "mongo":
		return []string{"--store", "mongo", "--mongo-database", c.Mongo.Database, "--mongo-batch", "40"}
	case "dynamodb":
		return []string{"--store", "dynamodb", "--dynamo-endpoint", c.Dynamo.Endpoint, "--dynamo-region", c.Dynamo.Region,
			"--dynamo-table-prefix", c.Dynamo.TablePrefix}
	default:
		return []string{"--store", "couchbase", "--couchbase-connstr", c.Couchbase.ConnStr, "--couchbase-user", c.Couchbase.User,
			"--couchbase-bucket", c.Couchbase.Bucket, "--couchbase-scope", c.Couchbase.Scope, "--couchbase-collection", c.Couchbase.Collection}
	}
}

// Open opens a store of kind on the test servers, closed when t ends.
func Open(t *testing.T, kind, ns string) stores.Store {
	t.Helper()
	return OpenConfig(t, Config(t, kind, ns))
}

// OpenConfig opens the store c describes, closed when t ends.
func OpenConfig(t *testing.T, c storeflags.Config) stores.Store {
	t.Helper()
	st, closeStore, err := c.Open(context.Background(), natstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeStore)
	return st
}

// Feed applies the audit stream to st as the store contract asks of a
// projector — every valid event on its own change's subject; messages
// that do not decode or sit on another change's subject are never
// stored — independently of the projector's code, so tests of verify and
// the operator commands do not depend on it. It reads message by message:
// test streams are small.
func Feed(t *testing.T, js jetstream.JetStream, st stores.Store) {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, producer.DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	var recs []stores.Record
	prev := map[string]events.Prev{} // each subject's chain, as a projector judges it
	for seq := uint64(1); seq <= s.CachedInfo().State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		e, err := events.Decode(m.Data)
		if err == nil {
			err = events.CheckSubject(events.DefaultSubjectPrefix, m.Subject, e)
		}
		if err == nil {
			recs = append(recs, stores.Record{Seq: seq, Hash: events.Hash(m.Data), Chain: stores.ChainOf(e, prev[m.Subject]), Event: e})
		}
		prev[m.Subject] = events.PrevOf(seq, events.Hash(m.Data), e, err)
	}
	if err := st.Apply(ctx, stores.Batch{Checkpoint: "projector", Records: recs}); err != nil {
		t.Fatal(err)
	}
}

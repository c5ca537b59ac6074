package couchbasestore_test

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"

	"github.com/auditflow/auditflow/internal/storebench"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/couchbasestore"
	"github.com/auditflow/auditflow/stores/storetest"
)

// testScope holds one collection per suite namespace.
const testScope = "auditflow_test"

// newStore opens stores with one collection per namespace, dropped when
// the test or benchmark ends.
func newStore(tb testing.TB) storetest.NewStore {
	cluster, bucket := connect(tb)
	var namespaces sync.Map
	tb.Cleanup(func() {
		namespaces.Range(func(ns, _ any) bool { dropCollection(cluster, bucket, ns.(string)); return true })
	})
	return func(t testing.TB, ns string) stores.Store {
		namespaces.Store(ns, true)
		s, err := couchbasestore.New(context.Background(), cluster, couchbasestore.Config{
			Bucket: bucket, Scope: testScope, Collection: ns,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
}

func TestConformance(t *testing.T) {
	// No Repairer: see doc.go. The operator tools rebuild by replay.
	storetest.Run(t, newStore(t), storetest.Features{AtomicBatch: false, Repairer: false, SchemaChecker: true})
}

// TestVerifySeesAlteredColumns: every value listings filter on, altered in
// the bucket, is reported by verify and put back by repair (a rebuild: no
// targeted repair).
func TestVerifySeesAlteredColumns(t *testing.T) {
	storebench.TamperVerifyRepair(t, newStore(t))
}

// TestParallelReplay: a rebuild with 4 writers equals a single-writer one,
// and a cancelled one resumes from a checkpoint it has fully stored.
func TestParallelReplay(t *testing.T) {
	storebench.ParallelReplay(t, newStore(t), storebench.ReplayConfig{Events: 800, BatchSize: 25})
}

// BenchmarkReplay: replay into gocaves over the same run's stream read
// and bulk insert, and 8 writers over one:
//
//	go test ./stores/couchbasestore -run '^$' -bench Replay -benchtime 1x
func BenchmarkReplay(b *testing.B) {
	storebench.BenchReplay(b, newStore(b), storebench.ReplayBenchConfig{Events: 3000, BatchSize: 250, Writers: 8})
}

// TestCheckSchema breaks what CheckSchema checks, one thing at a time:
// the meta document's layout, the meta document, the collection.
func TestCheckSchema(t *testing.T) {
	ctx := context.Background()
	cluster, bucket := connect(t)
	b := make([]byte, 4)
	_, _ = crand.Read(b)
	name := "schema" + hex.EncodeToString(b)
	t.Cleanup(func() { dropCollection(cluster, bucket, name) })
	st, err := couchbasestore.New(ctx, cluster, couchbasestore.Config{Bucket: bucket, Scope: testScope, Collection: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	var _ stores.SchemaChecker = st
	coll := cluster.Bucket(bucket).Scope(testScope).Collection(name)
	check := func(want string) {
		t.Helper()
		problems, err := st.CheckSchema(ctx)
		if err != nil {
			t.Fatalf("CheckSchema: %v", err)
		}
		switch {
		case want == "" && len(problems) != 0:
			t.Fatalf("CheckSchema = %q, want no problems", problems)
		case want != "" && (len(problems) != 1 || !strings.Contains(problems[0], want)):
			t.Fatalf("CheckSchema = %q, want one problem containing %q", problems, want)
		}
	}
	check("")
	if _, err := coll.Upsert("auditflow:meta", map[string]any{"layout": 99, "gen": 0, "clean": 0}, nil); err != nil {
		t.Fatal(err)
	}
	check("holds layout 99; this version reads layout 2")
	if _, err := coll.Remove("auditflow:meta", nil); err != nil {
		t.Fatal(err)
	}
	check("auditflow:meta in " + testScope + "." + name + " is missing")
	if err := cluster.Bucket(bucket).CollectionsV2().DropCollection(testScope, name, nil); err != nil {
		t.Fatal(err)
	}
	check("collection " + testScope + "." + name + " is missing")
}

// BenchmarkProjector compares the projector into Couchbase with an
// equal-work raw writer (RawApply: the documents Apply writes, one upsert
// each, all at once with the store's concurrency and durability, no reads,
// no CAS, no ordered steps), so apply/raw is what Apply's guards cost.
// Compare the ratios, not the absolute numbers (gocaves here):
//
//	go test -run '^$' -bench Projector -benchtime 2x ./stores/couchbasestore/
func BenchmarkProjector(b *testing.B) {
	open := newStore(b)
	var raws sync.Map // namespace → *rawStore
	storebench.Bench(b, open, func(ctx context.Context, ns string, recs []stores.Record) error {
		v, _ := raws.LoadOrStore(ns, &rawStore{})
		r := v.(*rawStore)
		r.once.Do(func() { r.st = open(b, ns).(*couchbasestore.Store) })
		if len(recs) == 0 {
			return nil // opened: tables and indexes created, untimed
		}
		return r.st.RawApply(ctx, stores.Batch{Checkpoint: "bench", Through: recs[0].Seq, Records: recs})
	}, storebench.BenchConfig{Events: 2000})
}

// rawStore is a store the raw writer opens once per namespace.
type rawStore struct {
	once sync.Once
	st   *couchbasestore.Store
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []couchbasestore.Config{
		{},
		{Bucket: "a b"},
		{Bucket: "b", Scope: "_system"},
		{Bucket: "b", Collection: "%x"},
		{Bucket: "b", Concurrency: -1},
		{Bucket: "b", Durability: 99},
		{Bucket: "b", OpTimeout: -time.Second},
	} {
		if err := cfg.Validate(); !errors.Is(err, stores.ErrInvalidConfig) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := couchbasestore.New(context.Background(), nil, couchbasestore.Config{Bucket: "b"}); !errors.Is(err, stores.ErrInvalidConfig) {
		t.Errorf("New with a nil cluster = %v", err)
	}
}

// connect opens the test cluster and returns it with the bucket name.
func connect(tb testing.TB) (*gocb.Cluster, string) {
	tb.Helper()
	connstr := storetest.ServerAddr(tb, "AUDITFLOW_TEST_COUCHBASE_CONNSTR")
	cluster, err := gocb.Connect(connstr, gocb.ClusterOptions{
		Authenticator: gocb.PasswordAuthenticator{
			Username: envOr("AUDITFLOW_TEST_COUCHBASE_USER", "Administrator"),
			Password: envOr("AUDITFLOW_TEST_COUCHBASE_PASSWORD", "password"),
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = cluster.Close(nil) })
	return cluster, envOr("AUDITFLOW_TEST_COUCHBASE_BUCKET", "default")
}

// dropCollection removes a test collection, so that runs against a real
// server do not pile up collections (which count against a cluster limit).
func dropCollection(cluster *gocb.Cluster, bucket, name string) {
	_ = cluster.Bucket(bucket).CollectionsV2().DropCollection(testScope, name, nil)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// TestReadOnlyCreatesNothing: a read-only open of a collection that does
// not exist fails and creates no collection; of an existing store, it
// reads.
func TestReadOnlyCreatesNothing(t *testing.T) {
	ctx := context.Background()
	cluster, bucket := connect(t)
	b := make([]byte, 4)
	_, _ = crand.Read(b)
	name := "ro" + hex.EncodeToString(b)
	t.Cleanup(func() { dropCollection(cluster, bucket, name) })
	cfg := couchbasestore.Config{Bucket: bucket, Scope: testScope, Collection: name, ReadOnly: true}
	if _, err := couchbasestore.New(ctx, cluster, cfg); err == nil || !strings.Contains(err.Error(), "nothing was created") {
		t.Fatalf("read-only open of a missing collection = %v", err)
	}
	scopes, err := cluster.Bucket(bucket).CollectionsV2().GetAllScopes(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range scopes {
		for _, c := range sc.Collections {
			if c.Name == name {
				t.Fatalf("the read-only open created %s.%s", sc.Name, name)
			}
		}
	}
	rw := cfg
	rw.ReadOnly = false
	st, err := couchbasestore.New(ctx, cluster, rw)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	ro, err := couchbasestore.New(ctx, cluster, cfg)
	if err != nil {
		t.Fatalf("read-only open of an existing store: %v", err)
	}
	if _, err := ro.Checkpoint(ctx, "projector"); err != nil {
		t.Fatal(err)
	}
}

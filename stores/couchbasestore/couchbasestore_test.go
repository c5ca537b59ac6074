package couchbasestore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/couchbase/gocb/v2"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/couchbasestore"
	"github.com/auditflow/auditflow/stores/storetest"
)

// testScope holds one collection per suite namespace.
const testScope = "auditflow_test"

func TestConformance(t *testing.T) {
	cluster, bucket := connect(t)
	var namespaces sync.Map // a collection per namespace, dropped at the end
	t.Cleanup(func() {
		namespaces.Range(func(ns, _ any) bool { dropCollection(cluster, bucket, ns.(string)); return true })
	})
	storetest.Run(t, func(t *testing.T, ns string) stores.Store {
		namespaces.Store(ns, true)
		s, err := couchbasestore.New(context.Background(), cluster, couchbasestore.Config{
			Bucket: bucket, Scope: testScope, Collection: ns,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}, storetest.Features{AtomicBatch: false})
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

// BenchmarkApply applies b.N events through Store.Apply in batches, and
// measures the SDK's raw rate on the same server in the same run: the same
// events upserted as plain documents into scratch collections with the
// store's concurrency and durability, once before and once after the store
// (the server slows as it fills, and the machine's load drifts). Compare
// the ratio, not the absolute numbers, across machines:
//
//	go test -run '^$' -bench Apply -benchtime 5000x -count 1 ./stores/couchbasestore/
func BenchmarkApply(b *testing.B) {
	const batchSize = 250
	cluster, bucket := connect(b)
	ctx := context.Background()
	ns := "bench" + randomHex(4)
	st, err := couchbasestore.New(ctx, cluster, couchbasestore.Config{Bucket: bucket, Scope: testScope, Collection: ns})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	defer dropCollection(cluster, bucket, ns)
	recs := benchRecords(b.N)

	b.StopTimer()
	rawTime := rawUpserts(b, cluster, bucket, ns+"raw1", recs)
	b.StartTimer()
	start := time.Now()
	for i := 0; i < len(recs); i += batchSize {
		if err := st.Apply(ctx, stores.Batch{Checkpoint: "bench", Records: recs[i:min(i+batchSize, len(recs))]}); err != nil {
			b.Fatal(err)
		}
	}
	storeTime := time.Since(start)
	b.StopTimer()
	rawTime += rawUpserts(b, cluster, bucket, ns+"raw2", recs)

	storeRate := float64(len(recs)) / storeTime.Seconds()
	rawRate := float64(2*len(recs)) / rawTime.Seconds()
	b.ReportMetric(storeRate, "store-events/s")
	b.ReportMetric(rawRate, "raw-upserts/s")
	b.ReportMetric(storeRate/rawRate, "store/raw")
}

// rawUpserts upserts recs, keyed by event id, into a new collection with
// the store's default concurrency and durability, and returns the time.
func rawUpserts(b *testing.B, cluster *gocb.Cluster, bucket, collection string, recs []stores.Record) time.Duration {
	bk := cluster.Bucket(bucket)
	err := bk.CollectionsV2().CreateCollection(testScope, collection, nil, nil)
	if err != nil && !errors.Is(err, gocb.ErrCollectionExists) {
		b.Fatal(err)
	}
	b.Cleanup(func() { dropCollection(cluster, bucket, collection) })
	coll := bk.Scope(testScope).Collection(collection)
	var (
		next   atomic.Int64
		wg     sync.WaitGroup
		failed atomic.Pointer[error]
	)
	start := time.Now()
	for range couchbasestore.DefaultConcurrency {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(recs); i = int(next.Add(1) - 1) {
				opts := &gocb.UpsertOptions{DurabilityLevel: couchbasestore.DefaultDurability}
				if _, err := coll.Upsert(recs[i].ID, recs[i], opts); err != nil {
					failed.Store(&err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	return time.Since(start)
}

// benchRecords builds n events as a fleet would emit them: 8 pipelines
// running their changes one after another, most changes succeeding at once,
// some failing and succeeding on retry, a few left failed.
func benchRecords(n int) []stores.Record {
	base := time.Now().UTC()
	out := make([]stores.Record, 0, n)
	seq := uint64(0)
	emit := func(typ events.Type, pipeline, change string) {
		seq++
		e := events.New(typ, pipeline, change)
		e.OccurredAt = base.Add(time.Duration(seq) * time.Millisecond)
		e.ExecutionID = "exec-" + change
		e.Author, e.Order, e.TargetSystem = "alice", change[:4], "orders-db"
		e.Host, e.RunnerID, e.LockToken = "host-1", "runner-"+pipeline, 7
		e.Duration = 1500 * time.Millisecond
		e.Metadata = map[string]string{"ticket": "OPS-1"}
		if typ == events.ExecutionFailed {
			e.ErrorMessage = "duplicate key value violates unique constraint"
			e.ErrorTrace = "at migrate.apply\nat runner.run\n"
		}
		out = append(out, stores.Record{Seq: seq, Event: e})
	}
	lifecycles := [][]events.Type{
		{events.ExecutionStarted, events.ExecutionSucceeded},
		{events.ExecutionStarted, events.ExecutionFailed, events.ExecutionStarted, events.ExecutionSucceeded},
		{events.ExecutionStarted, events.ExecutionFailed},
	}
	const pipelines = 8
	for c := 0; len(out) < n; c++ {
		k := c / pipelines // the pipeline's k-th change
		life := lifecycles[0]
		switch {
		case k%20 == 7:
			life = lifecycles[2]
		case k%5 == 1:
			life = lifecycles[1]
		}
		for _, typ := range life[:min(len(life), n-len(out))] {
			emit(typ, fmt.Sprintf("pipeline-%d", c%pipelines), fmt.Sprintf("%04d-change", k))
		}
	}
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

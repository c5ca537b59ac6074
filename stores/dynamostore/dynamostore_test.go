package dynamostore_test

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/dynamostore"
	"github.com/auditflow/auditflow/stores/storetest"
)

const endpointEnv = "AUDITFLOW_TEST_DYNAMO_ENDPOINT"

func TestConformance(t *testing.T) {
	client := newClient(storetest.ServerAddr(t, endpointEnv))
	storetest.Run(t, func(t *testing.T, ns string) stores.Store {
		prefix := ns + "_"
		s, err := dynamostore.New(context.Background(), client, dynamostore.Config{TablePrefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = s.Close()
			dropTables(t, client, prefix) // keep the in-memory server small
		})
		return s
	}, storetest.Features{AtomicBatch: false}) // no transactions: see the package doc
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []dynamostore.Config{
		{TablePrefix: "bad prefix"},
		{ChangeLogTable: "x"}, // table names need 3 characters
		{ChangeLogTable: "same", IssuesTable: "same"},
		{BillingMode: types.BillingModeProvisioned},
		{ReadCapacity: 5, WriteCapacity: 5},
		{BillingMode: "FREE"},
		{BatchSize: 26},
		{Concurrency: -1},
		{RetryTimeout: -time.Second},
	} {
		if err := cfg.Validate(); !errors.Is(err, stores.ErrInvalidConfig) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := dynamostore.New(context.Background(), nil, dynamostore.Config{}); !errors.Is(err, stores.ErrInvalidConfig) {
		t.Errorf("New with a nil client = %v", err)
	}
}

// TestBackend covers what is particular to DynamoDB: item size limits,
// table checks, billing modes and cancellation in flight.
func TestBackend(t *testing.T) {
	client := newClient(storetest.ServerAddr(t, endpointEnv))
	ctx := context.Background()
	prefix := fmt.Sprintf("backend%d", time.Now().UnixNano()%1e9)
	t.Cleanup(func() { dropTables(t, client, prefix) })
	open := func(t *testing.T, cfg dynamostore.Config) (*dynamostore.Store, error) {
		t.Helper()
		cfg.TablePrefix = prefix + strings.ReplaceAll(t.Name(), "/", "_") + "_"
		return dynamostore.New(ctx, client, cfg)
	}
	event := func(seq uint64, change string) stores.Record {
		e := events.New(events.ExecutionFailed, "p", change)
		e.ExecutionID, e.ErrorMessage = "x", "boom"
		return stores.Record{Seq: seq, Event: e}
	}

	t.Run("OversizedEvent", func(t *testing.T) {
		st, err := open(t, dynamostore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		big := event(2, "big")
		noise := make([]byte, 600<<10) // random: gzip cannot shrink it under 400 KB
		_, _ = rand.Read(noise)
		big.ErrorTrace = base64.StdEncoding.EncodeToString(noise)
		err = st.Apply(ctx, stores.Batch{Checkpoint: "c", Records: []stores.Record{event(1, "small"), big}})
		if !errors.Is(err, stores.ErrInvalidRecord) {
			t.Fatalf("Apply of a 600 KB event = %v, want ErrInvalidRecord", err)
		}
		if rows, err := st.History(ctx, stores.HistoryQuery{}); err != nil || len(rows) != 0 {
			t.Fatalf("a refused batch left %d rows (%v)", len(rows), err)
		}
	})

	t.Run("ForeignTable", func(t *testing.T) {
		name := prefix + "TestBackend_ForeignTable_changeLog"
		if _, err := client.CreateTable(ctx, &dynamodb.CreateTableInput{
			TableName:            aws.String(name),
			AttributeDefinitions: []types.AttributeDefinition{{AttributeName: aws.String("pk"), AttributeType: types.ScalarAttributeTypeS}},
			KeySchema:            []types.KeySchemaElement{{AttributeName: aws.String("pk"), KeyType: types.KeyTypeHash}},
			BillingMode:          types.BillingModePayPerRequest,
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := open(t, dynamostore.Config{}); !errors.Is(err, stores.ErrInvalidConfig) {
			t.Fatalf("New over a table with another key = %v, want ErrInvalidConfig", err)
		}
	})

	t.Run("SkipCreateTables", func(t *testing.T) {
		if _, err := open(t, dynamostore.Config{SkipCreateTables: true}); !errors.Is(err, stores.ErrNotFound) {
			t.Fatalf("New without tables and SkipCreateTables = %v, want ErrNotFound", err)
		}
	})

	t.Run("Provisioned", func(t *testing.T) {
		st, err := open(t, dynamostore.Config{BillingMode: types.BillingModeProvisioned, ReadCapacity: 5, WriteCapacity: 7})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Apply(ctx, stores.Batch{Checkpoint: "c", Records: []stores.Record{event(1, "a")}}); err != nil {
			t.Fatal(err)
		}
		name := prefix + "TestBackend_Provisioned_changeLog"
		out, err := client.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(name)})
		if err != nil {
			t.Fatal(err)
		}
		if w := out.Table.ProvisionedThroughput.WriteCapacityUnits; w == nil || *w != 7 || len(out.Table.GlobalSecondaryIndexes) != 4 {
			t.Fatalf("table %s: write capacity %v, %d indexes; want 7 and 4", name, w, len(out.Table.GlobalSecondaryIndexes))
		}
	})

	t.Run("CancelInFlight", func(t *testing.T) {
		st, err := open(t, dynamostore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		var recs []stores.Record
		for i := range 300 {
			recs = append(recs, event(uint64(i+1), fmt.Sprintf("c%d", i)))
		}
		for _, tc := range []struct {
			name string
			ctx  func() (context.Context, context.CancelFunc)
			want error
		}{
			{"deadline", func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 3*time.Millisecond) }, context.DeadlineExceeded},
			{"cancel", func() (context.Context, context.CancelFunc) {
				c, cancel := context.WithCancel(ctx)
				time.AfterFunc(3*time.Millisecond, cancel)
				return c, cancel
			}, context.Canceled},
		} {
			c, cancel := tc.ctx()
			err := st.Apply(c, stores.Batch{Checkpoint: "c", Records: recs})
			cancel()
			if !errors.Is(err, tc.want) {
				t.Fatalf("%s: Apply = %v, want %v", tc.name, err, tc.want)
			}
			t.Logf("%s: %v", tc.name, err)
		}
		if n, err := st.Checkpoint(ctx, "c"); err != nil || n != 0 {
			t.Fatalf("an interrupted Apply moved the checkpoint to %d (%v)", n, err)
		}
		if err := st.Apply(ctx, stores.Batch{Checkpoint: "c", Records: recs}); err != nil {
			t.Fatal(err)
		}
		if got, err := st.History(ctx, stores.HistoryQuery{Limit: 1000}); err != nil || len(got) != 300 {
			t.Fatalf("after the retry: %d rows (%v), want 300", len(got), err)
		}
	})

	t.Run("Closed", func(t *testing.T) {
		st, err := open(t, dynamostore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		_ = st.Close()
		if _, err := st.Checkpoint(ctx, "c"); !errors.Is(err, stores.ErrClosed) {
			t.Fatalf("Checkpoint after Close = %v, want ErrClosed", err)
		}
	})
}

func newClient(endpoint string) *dynamodb.Client {
	return dynamodb.New(dynamodb.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
	})
}

// dropTables deletes every table whose name starts with prefix.
func dropTables(tb testing.TB, client *dynamodb.Client, prefix string) {
	ctx := context.Background()
	pages := dynamodb.NewListTablesPaginator(client, &dynamodb.ListTablesInput{})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			tb.Logf("list tables: %v", err)
			return
		}
		for _, name := range page.TableNames {
			if !strings.HasPrefix(name, prefix) {
				continue
			}
			_, err := client.DeleteTable(ctx, &dynamodb.DeleteTableInput{TableName: aws.String(name)})
			var nf *types.ResourceNotFoundException
			if err != nil && !errors.As(err, &nf) {
				tb.Logf("delete table %s: %v", name, err)
			}
		}
	}
}

// eventSource makes realistic event streams: changes across a few
// pipelines, most applied on the first attempt, some failing with a stack
// trace before a retry succeeds.
type eventSource struct {
	seq    uint64
	change int
	queue  []stores.Record
}

var trace = strings.Repeat("\tat com.example.orders.Migration0042.apply(Migration0042.java:17)\n", 30) // ~2 KB

func (g *eventSource) next(n int) []stores.Record {
	for len(g.queue) < n {
		g.change++
		pipeline := []string{"billing", "shipping", "identity"}[g.change%3]
		change := fmt.Sprintf("%04d-migrate-%d", g.change, g.change*7919%1000)
		steps := []events.Type{events.ExecutionStarted, events.ExecutionSucceeded}
		if g.change%5 == 0 {
			steps = []events.Type{events.ExecutionStarted, events.ExecutionFailed, events.ExecutionStarted, events.ExecutionSucceeded}
		}
		for i, typ := range steps {
			g.seq++
			e := events.New(typ, pipeline, change)
			e.ExecutionID = fmt.Sprintf("exec-%d-%d", g.change, i/2)
			e.Author, e.Order, e.TargetSystem = "alice@example.com", fmt.Sprintf("%04d", g.change), "orders-db"
			e.Host, e.RunnerID, e.LockToken = "runner-host-7", "runner-7f3a", uint64(g.change)
			e.Metadata = map[string]string{"ticket": fmt.Sprintf("OPS-%d", g.change), "git": "3f9c2e1"}
			if typ != events.ExecutionStarted {
				e.Duration = time.Duration(g.change%900) * time.Millisecond
			}
			if typ == events.ExecutionFailed {
				e.ErrorMessage, e.ErrorTrace = "duplicate key value violates unique constraint \"orders_pkey\"", trace
			}
			g.queue = append(g.queue, stores.Record{Seq: g.seq, Event: e})
		}
	}
	out := g.queue[:n]
	g.queue = g.queue[n:]
	return out
}

// BenchmarkApply measures Store.Apply against the raw BatchWriteItem rate
// of the same items on the same server in the same run, so the ratio
// carries over between machines even though dynalite's absolute numbers do
// not. Keep it short, e.g.
//
//	go test ./stores/dynamostore/ -run '^$' -bench Apply -benchtime 20x -count 1
//
// (20 batches of 100 events).
func BenchmarkApply(b *testing.B) {
	const batchSize = 100
	ctx := context.Background()
	client := newClient(storetest.ServerAddr(b, endpointEnv))
	prefix := fmt.Sprintf("bench%d_", time.Now().UnixNano()%1e9)
	b.Cleanup(func() { dropTables(b, client, prefix) })
	cfg := dynamostore.Config{TablePrefix: prefix}
	st, err := dynamostore.New(ctx, client, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	_ = cfg.Validate() // for the defaults used below

	var (
		src     eventSource
		applied int
		elapsed time.Duration
	)
	for b.Loop() {
		batch := stores.Batch{Checkpoint: "bench", Records: src.next(batchSize)}
		start := time.Now()
		if err := st.Apply(ctx, batch); err != nil {
			b.Fatal(err)
		}
		elapsed += time.Since(start)
		applied += batchSize
	}
	b.StopTimer()
	storeRate := float64(applied) / elapsed.Seconds()

	// Raw: the very items the store wrote to its changeLog, written again
	// with BatchWriteItem (25 per call, as many calls in flight as the
	// store uses) into a table that has the same key and no indexes.
	items := scanAll(b, client, prefix+cfg.ChangeLogTable)
	raw := prefix + "raw"
	if _, err := client.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName:            aws.String(raw),
		AttributeDefinitions: []types.AttributeDefinition{{AttributeName: aws.String("id"), AttributeType: types.ScalarAttributeTypeS}},
		KeySchema:            []types.KeySchemaElement{{AttributeName: aws.String("id"), KeyType: types.KeyTypeHash}},
		BillingMode:          types.BillingModePayPerRequest,
	}); err != nil {
		b.Fatal(err)
	}
	if err := dynamodb.NewTableExistsWaiter(client, func(o *dynamodb.TableExistsWaiterOptions) {
		o.MinDelay, o.MaxDelay = 50*time.Millisecond, time.Second
	}).Wait(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(raw)}, time.Minute); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	rawWrite(b, client, raw, items, cfg.Concurrency)
	rawRate := float64(len(items)) / time.Since(start).Seconds()

	b.ReportMetric(storeRate, "store-events/s")
	b.ReportMetric(rawRate, "raw-events/s")
	b.ReportMetric(storeRate/rawRate, "store/raw")
}

func scanAll(tb testing.TB, client *dynamodb.Client, table string) []map[string]types.AttributeValue {
	var out []map[string]types.AttributeValue
	pages := dynamodb.NewScanPaginator(client, &dynamodb.ScanInput{TableName: aws.String(table)})
	for pages.HasMorePages() {
		page, err := pages.NextPage(context.Background())
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, page.Items...)
	}
	return out
}

func rawWrite(tb testing.TB, client *dynamodb.Client, table string, items []map[string]types.AttributeValue, workers int) {
	jobs := make(chan []types.WriteRequest)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range workers {
		wg.Go(func() {
			for reqs := range jobs { // drain even after an error, so the feeder never blocks
				pending := map[string][]types.WriteRequest{table: reqs}
				for len(pending[table]) > 0 {
					out, err := client.BatchWriteItem(context.Background(), &dynamodb.BatchWriteItemInput{RequestItems: pending})
					if err != nil {
						mu.Lock()
						first = cmp.Or(first, err)
						mu.Unlock()
						break
					}
					pending = out.UnprocessedItems
				}
			}
		})
	}
	for c := range slices.Chunk(items, 25) {
		reqs := make([]types.WriteRequest, len(c))
		for i, it := range c {
			reqs[i] = types.WriteRequest{PutRequest: &types.PutRequest{Item: it}}
		}
		jobs <- reqs
	}
	close(jobs)
	wg.Wait()
	if first != nil {
		tb.Fatal(first)
	}
}

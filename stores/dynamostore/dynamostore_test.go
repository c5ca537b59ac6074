package dynamostore_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
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
	"github.com/auditflow/auditflow/internal/storebench"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/dynamostore"
	"github.com/auditflow/auditflow/stores/storetest"
)

const endpointEnv = "AUDITFLOW_TEST_DYNAMO_ENDPOINT"

// newStore opens stores with the namespace as table prefix; their tables
// are dropped when the test ends, to keep the in-memory server small.
func newStore(client *dynamodb.Client) storetest.NewStore {
	return func(t testing.TB, ns string) stores.Store {
		prefix := ns + "_"
		s, err := dynamostore.New(context.Background(), client, dynamostore.Config{TablePrefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = s.Close()
			dropTables(t, client, prefix)
		})
		return s
	}
}

func TestConformance(t *testing.T) {
	client := newClient(storetest.ServerAddr(t, endpointEnv))
	// No transactions (see the package doc), so no atomic batches.
	storetest.Run(t, newStore(client), storetest.Features{AtomicBatch: false, Repairer: true, SchemaChecker: true})
}

// TestVerifySeesAlteredColumns: every value listings filter on, altered in
// the database, is reported by verify and put back by repair.
func TestVerifySeesAlteredColumns(t *testing.T) {
	storebench.TamperVerifyRepair(t, newStore(newClient(storetest.ServerAddr(t, endpointEnv))))
}

// BenchmarkProjector compares the projector into DynamoDB with an
// equal-work raw writer (RawApply: the same items, tables, indexes and
// calls as Apply, without conditions), so apply/raw is what the
// conditions cost. On dynalite (single-threaded Node.js) only the ratios
// mean anything. Keep it short:
//
//	go test ./stores/dynamostore -run '^$' -bench Projector -benchtime 2x
func BenchmarkProjector(b *testing.B) {
	client := newClient(storetest.ServerAddr(b, endpointEnv))
	open := newStore(client)
	var raws sync.Map // namespace → *rawStore
	storebench.Bench(b, open, func(ctx context.Context, ns string, recs []stores.Record) error {
		v, _ := raws.LoadOrStore(ns, &rawStore{})
		r := v.(*rawStore)
		r.once.Do(func() { r.st = open(b, ns).(*dynamostore.Store) })
		if len(recs) == 0 {
			return nil // opened: tables and indexes created, untimed
		}
		return r.st.RawApply(ctx, stores.Batch{Checkpoint: "bench", Through: recs[0].Seq, Records: recs})
	}, storebench.BenchConfig{Events: 2000, BatchSize: 100})
}

// rawStore is a store the raw writer opens once per namespace, for its
// tables and indexes.
type rawStore struct {
	once sync.Once
	st   *dynamostore.Store
}

// TestParallelReplay: a rebuild with 4 writers equals a single-writer one,
// and a cancelled one resumes from a checkpoint it has fully stored.
func TestParallelReplay(t *testing.T) {
	client := newClient(storetest.ServerAddr(t, endpointEnv))
	storebench.ParallelReplay(t, newStore(client), storebench.ReplayConfig{Events: 800, BatchSize: 25})
}

// BenchmarkReplay: replay into dynalite over the same run's stream read
// and bulk insert, and 8 writers over one (dynalite is one Node.js
// process: it may not scale as DynamoDB does):
//
//	go test ./stores/dynamostore -run '^$' -bench Replay -benchtime 1x
func BenchmarkReplay(b *testing.B) {
	client := newClient(storetest.ServerAddr(b, endpointEnv))
	storebench.BenchReplay(b, newStore(client), storebench.ReplayBenchConfig{Events: 3000, BatchSize: 250, Writers: 8})
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
		_, err := open(t, dynamostore.Config{})
		if !errors.Is(err, stores.ErrInvalidConfig) {
			t.Fatalf("New over a table with another key = %v, want ErrInvalidConfig", err)
		}
		t.Log(err)
	})

	t.Run("SchemaCheck", func(t *testing.T) {
		st, err := open(t, dynamostore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		if problems, err := st.CheckSchema(ctx); err != nil || len(problems) != 0 {
			t.Fatalf("fresh store: CheckSchema = %q, %v", problems, err)
		}
		// Replace the changeLog with a table keyed otherwise, the issues
		// table with one without indexes, and drop the checkpoints.
		p := prefix + "TestBackend_SchemaCheck_"
		recreate := func(table string, keys ...string) {
			t.Helper()
			deleteTable(t, client, p+table)
			if keys == nil {
				return
			}
			in := &dynamodb.CreateTableInput{TableName: aws.String(p + table), BillingMode: types.BillingModePayPerRequest}
			for i, k := range keys {
				kt := types.KeyTypeHash
				if i > 0 {
					kt = types.KeyTypeRange
				}
				in.AttributeDefinitions = append(in.AttributeDefinitions, types.AttributeDefinition{AttributeName: aws.String(k), AttributeType: types.ScalarAttributeTypeS})
				in.KeySchema = append(in.KeySchema, types.KeySchemaElement{AttributeName: aws.String(k), KeyType: kt})
			}
			if _, err := client.CreateTable(ctx, in); err != nil {
				t.Fatal(err)
			}
		}
		recreate("changeLog", "pk")
		recreate("issues", "pipeline", "changeId")
		recreate("checkpoints")
		problems, err := st.CheckSchema(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("problems:\n%s", strings.Join(problems, "\n"))
		want := []string{
			"table " + p + "changeLog: key is [pk], want [seq]",
			"table " + p + "changeLog: index bySeq is missing",
			"table " + p + "changeLog: index byState is missing",
			"table " + p + "issues: index bySeq is missing",
			"table " + p + "issues: index byStatus is missing",
			"table " + p + "checkpoints is missing",
		}
		for _, w := range want {
			if !slices.Contains(problems, w) {
				t.Errorf("CheckSchema does not report %q", w)
			}
		}
		if len(problems) != 10 { // 1 key + 4 + 4 indexes + 1 table
			t.Errorf("CheckSchema reports %d problems, want 10", len(problems))
		}
	})

	t.Run("OlderLayout", func(t *testing.T) {
		// A changeLog an older version created, keyed by event id: New
		// refuses it with the ways to rebuild, and CheckSchema reports it
		// if it appears under an open store.
		name := prefix + "TestBackend_OlderLayout_changeLog"
		createKeyedByID := func() {
			t.Helper()
			if _, err := client.CreateTable(ctx, &dynamodb.CreateTableInput{
				TableName:            aws.String(name),
				AttributeDefinitions: []types.AttributeDefinition{{AttributeName: aws.String("id"), AttributeType: types.ScalarAttributeTypeS}},
				KeySchema:            []types.KeySchemaElement{{AttributeName: aws.String("id"), KeyType: types.KeyTypeHash}},
				BillingMode:          types.BillingModePayPerRequest,
			}); err != nil {
				t.Fatal(err)
			}
		}
		createKeyedByID()
		_, err := open(t, dynamostore.Config{})
		if !errors.Is(err, stores.ErrInvalidConfig) || !strings.Contains(err.Error(), "table "+name+" is keyed by event id") ||
			!strings.Contains(err.Error(), "aws dynamodb delete-table --table-name "+name) ||
			!strings.Contains(err.Error(), "auditflow --store dynamodb replay --reset") {
			t.Fatalf("New over a changeLog keyed by event id = %v, want ErrInvalidConfig with the ways to rebuild", err)
		}
		t.Log(err)
		deleteTable(t, client, name)
		st, err := open(t, dynamostore.Config{})
		if err != nil {
			t.Fatalf("New once the older table is deleted: %v", err)
		}
		deleteTable(t, client, name)
		createKeyedByID()
		problems, err := st.CheckSchema(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(problems) != 5 || !strings.HasPrefix(problems[0], "table "+name+" is keyed by event id") { // and 4 indexes missing
			t.Fatalf("CheckSchema of a changeLog keyed by event id = %q", problems)
		}
	})

	t.Run("RowsWithoutOptionalAttributes", func(t *testing.T) {
		// Attributes an event may lack (hashes, signature, trust and chain
		// verdicts, its place in the chain) are left out: they read as ""
		// and 0.
		st, err := open(t, dynamostore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		old := event(1, "old")
		old.SchemaVersion, old.Position = 1, 0
		if _, err := client.PutItem(ctx, &dynamodb.PutItemInput{
			TableName: aws.String(prefix + "TestBackend_RowsWithoutOptionalAttributes_changeLog"),
			Item: map[string]types.AttributeValue{
				"id": &types.AttributeValueMemberS{Value: old.ID}, "seq": &types.AttributeValueMemberN{Value: "1"},
				"shard": &types.AttributeValueMemberS{Value: "0"}, "type": &types.AttributeValueMemberS{Value: string(old.Type)},
				"state": &types.AttributeValueMemberS{Value: string(old.State())}, "schemaVersion": &types.AttributeValueMemberN{Value: "1"},
				"pipeline": &types.AttributeValueMemberS{Value: old.Pipeline}, "changeId": &types.AttributeValueMemberS{Value: old.ChangeID},
				"executionId": &types.AttributeValueMemberS{Value: old.ExecutionID}, "errorMessage": &types.AttributeValueMemberS{Value: old.ErrorMessage},
				"recovery":   &types.AttributeValueMemberS{Value: string(old.Recovery)},
				"occurredAt": &types.AttributeValueMemberS{Value: stores.FormatTime(old.OccurredAt)},
			},
		}); err != nil {
			t.Fatal(err)
		}
		newer := event(2, "old")
		newer.Hash, newer.PrevHash, newer.PrevSeq, newer.Position = events.Hash([]byte("2")), events.Hash([]byte("1")), 1, 2
		if err := st.Apply(ctx, stores.Batch{Checkpoint: "c", Records: []stores.Record{newer}}); err != nil {
			t.Fatal(err)
		}
		got, err := st.History(ctx, stores.HistoryQuery{ChangeID: "old"})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 {
			t.Fatalf("history = %+v, want 2 rows", got)
		}
		old.OccurredAt, got[1].OccurredAt = old.OccurredAt.UTC(), got[1].OccurredAt.UTC()
		old.RowState = old.State()
		if got[0].Hash != newer.Hash || got[0].PrevHash != newer.PrevHash || got[0].PrevSeq != 1 || got[0].Position != 2 ||
			!reflect.DeepEqual(got[1], old) {
			t.Fatalf("history = %+v\nwant [%+v %+v]", got, newer, old)
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
			err := st.Apply(c, stores.Batch{Checkpoint: "c", Through: 300, Records: recs})
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

// deleteTable deletes a table and waits until it is gone.
func deleteTable(tb testing.TB, client *dynamodb.Client, table string) {
	tb.Helper()
	ctx := context.Background()
	if _, err := client.DeleteTable(ctx, &dynamodb.DeleteTableInput{TableName: aws.String(table)}); err != nil {
		tb.Fatal(err)
	}
	if err := dynamodb.NewTableNotExistsWaiter(client, func(o *dynamodb.TableNotExistsWaiterOptions) {
		o.MinDelay, o.MaxDelay = 50*time.Millisecond, time.Second
	}).Wait(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(table)}, time.Minute); err != nil {
		tb.Fatal(err)
	}
}

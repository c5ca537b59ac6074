package dynamostore

import (
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/auditflow/auditflow/stores"
)

// Config configures a Store. Zero fields take the defaults shown.
//
// Region, endpoint and credentials are not here: they belong to the
// *dynamodb.Client that New is given, which the caller builds. To point a
// store at DynamoDB Local or dynalite, build that client with a fixed region,
// static credentials (any values) and the local endpoint:
//
//	awsCfg, err := config.LoadDefaultConfig(ctx,
//		config.WithRegion("us-east-1"),
//		config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("local", "local", "")))
//	client := dynamodb.NewFromConfig(awsCfg, func(o *dynamodb.Options) {
//		o.BaseEndpoint = aws.String("http://127.0.0.1:8000")
//	})
//	store, err := dynamostore.New(ctx, client, dynamostore.Config{TablePrefix: "dev_"})
type Config struct {
	// TablePrefix is prepended to every table name, so several stores
	// (environments, tenants, test cases) share one account and region
	// without seeing each other's data. Default "".
	TablePrefix string

	ChangeLogTable   string // default "changeLog"
	IssuesTable      string // default "issues"
	CheckpointsTable string // default "checkpoints"

	// EventuallyConsistentReads turns off strongly consistent reads, which
	// cost twice as much. The default (false) reads checkpoints, single
	// issues and the rows History and Issues return with ConsistentRead, so
	// a projector restarting on another machine sees its own last
	// checkpoint. Which rows a listing finds comes from a global secondary
	// index and is always eventually consistent (see the package doc).
	EventuallyConsistentReads bool

	// BillingMode of tables New creates: types.BillingModePayPerRequest
	// (default, on-demand) or types.BillingModeProvisioned, which needs
	// ReadCapacity and WriteCapacity; each table and each of its indexes
	// gets that capacity.
	BillingMode   types.BillingMode
	ReadCapacity  int64
	WriteCapacity int64

	// SkipCreateTables stops New from creating missing tables, for
	// accounts where tables come from infrastructure code: New then fails
	// if a table is missing. Either way New checks that existing tables
	// have the keys and indexes this package queries.
	SkipCreateTables bool

	// BatchSize is the number of items per BatchWriteItem call, 1 to 25
	// (DynamoDB's maximum). Default 25.
	BatchSize int

	// Concurrency is the number of requests one Apply, History or Issues
	// call keeps in flight (BatchWriteItem chunks, conditional issue writes,
	// BatchGetItem chunks). Default 4, at most 64.
	Concurrency int

	// RetryTimeout bounds how long a call keeps retrying the items or keys
	// DynamoDB returned unprocessed (it does so when a partition is at its
	// throughput limit), with exponential back-off. The SDK's own retryer
	// handles throttling errors separately. Default 1 minute.
	RetryTimeout time.Duration

	// Logger receives table creation (Info) and retries of unprocessed
	// items (Debug). Nil discards.
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultChangeLogTable   = "changeLog"
	DefaultIssuesTable      = "issues"
	DefaultCheckpointsTable = "checkpoints"
	DefaultBatchSize        = 25
	DefaultConcurrency      = 4
	DefaultRetryTimeout     = time.Minute

	maxBatchSize   = 25 // BatchWriteItem's limit
	maxConcurrency = 64
)

var (
	tableNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{3,255}$`)
	prefixRE    = regexp.MustCompile(`^[A-Za-z0-9_.-]*$`)
)

// Validate fills in defaults and checks the configuration.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: dynamostore: "+format, append([]any{stores.ErrInvalidConfig}, args...)...)
	}
	if !prefixRE.MatchString(c.TablePrefix) {
		return bad("TablePrefix %q may only hold A-Z a-z 0-9 _ . -", c.TablePrefix)
	}
	for _, f := range []struct {
		name string
		v    *string
		def  string
	}{
		{"ChangeLogTable", &c.ChangeLogTable, DefaultChangeLogTable},
		{"IssuesTable", &c.IssuesTable, DefaultIssuesTable},
		{"CheckpointsTable", &c.CheckpointsTable, DefaultCheckpointsTable},
	} {
		if *f.v == "" {
			*f.v = f.def
		}
		if full := c.TablePrefix + *f.v; !tableNameRE.MatchString(full) {
			return bad("%s: table name %q is not a DynamoDB table name (3 to 255 of A-Z a-z 0-9 _ . -)", f.name, full)
		}
	}
	if c.ChangeLogTable == c.IssuesTable || c.ChangeLogTable == c.CheckpointsTable || c.IssuesTable == c.CheckpointsTable {
		return bad("table names must differ")
	}
	switch c.BillingMode {
	case "", types.BillingModePayPerRequest:
		c.BillingMode = types.BillingModePayPerRequest
		if c.ReadCapacity != 0 || c.WriteCapacity != 0 {
			return bad("ReadCapacity and WriteCapacity apply to BillingMode %s only", types.BillingModeProvisioned)
		}
	case types.BillingModeProvisioned:
		if c.ReadCapacity <= 0 || c.WriteCapacity <= 0 {
			return bad("BillingMode %s needs ReadCapacity and WriteCapacity above 0", types.BillingModeProvisioned)
		}
	default:
		return bad("unknown BillingMode %q (want %s or %s)", c.BillingMode, types.BillingModePayPerRequest, types.BillingModeProvisioned)
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.BatchSize < 1 || c.BatchSize > maxBatchSize {
		return bad("BatchSize %d is outside 1..%d", c.BatchSize, maxBatchSize)
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Concurrency < 1 || c.Concurrency > maxConcurrency {
		return bad("Concurrency %d is outside 1..%d", c.Concurrency, maxConcurrency)
	}
	if c.RetryTimeout == 0 {
		c.RetryTimeout = DefaultRetryTimeout
	}
	if c.RetryTimeout < 0 {
		return bad("negative RetryTimeout %s", c.RetryTimeout)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

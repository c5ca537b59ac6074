// Package storeflags holds the command-line configuration of every audit
// store backend — flags with AUDITFLOW_* environment defaults — and opens
// the configured one. The projector and the operator tools share it, so a
// store is configured the same way everywhere.
//
// Secrets come from the environment or from files (--mongo-uri-file,
// --couchbase-password-file), never from a flag's default shown by -h, and
// never reach a log or an error: URIs are shown through redact.URI (the
// password, and credential-like query parameters such as
// tlsCertificateKeyFilePassword or an AWS_SESSION_TOKEN, are replaced),
// errors from the database clients are masked with Secrets, and Couchbase
// passwords and AWS credentials are not printed at all (AWS uses its
// standard credential chain: environment, shared files, instance or pod
// roles).
package storeflags

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/couchbase/gocb/v2"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readconcern"
	"go.mongodb.org/mongo-driver/v2/mongo/readpref"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/internal/redact"
	"github.com/auditflow/auditflow/stores"
	"github.com/auditflow/auditflow/stores/couchbasestore"
	"github.com/auditflow/auditflow/stores/dynamostore"
	"github.com/auditflow/auditflow/stores/mongostore"
	"github.com/auditflow/auditflow/stores/sqlitestore"
)

// ErrStoreMissing: a command that only reads found no store to read (a
// missing SQLite file); it creates none.
var ErrStoreMissing = errors.New("audit store missing")

// Kinds lists the backends.
var Kinds = []string{"sqlite", "mongo", "dynamodb", "couchbase"}

// Config is every backend's settings; Kind picks one.
type Config struct {
	Kind string
	// CheckOnly opens the store without creating or changing its tables,
	// collections or indexes where the backend allows (sqlite, mongo,
	// dynamodb), so a schema check sees what is really there.
	CheckOnly bool
	// ReadOnly opens the store for reading only: nothing is created — no
	// SQLite file, table, collection or index (sqlite, mongo, dynamodb;
	// couchbase still creates a missing scope or collection) — and a
	// missing SQLite file is ErrStoreMissing, naming the path.
	ReadOnly bool
	SQLite   struct {
		Path, ChangeLog, Issues, Checkpoints string
	}
	Mongo struct {
		URI, URIFile, Database, ChangeLog, Issues, Checkpoints string
		WriteConcern, ReadConcern, ReadPreference              string
		Journal, SkipIndexes                                   bool
		BatchSize                                              int
		loadedFile                                             string // URIFile, once read into URI
	}
	Dynamo struct {
		Region, Endpoint, TablePrefix, ChangeLog, Issues, Checkpoints string
		Billing                                                       string
		ReadCapacity, WriteCapacity                                   int64
		EventuallyConsistent, SkipCreate                              bool
		Concurrency                                                   int
	}
	Couchbase struct {
		ConnStr, User, PasswordFile, Bucket, Scope, Collection, Durability string
		Concurrency                                                        int
		Timeout                                                            time.Duration
		password                                                           string
	}
}

// RegisterFlags adds --store and every backend's flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Kind, "store", natsconn.Env("AUDITFLOW_STORE", "sqlite"), "audit store: "+strings.Join(Kinds, ", ")+" [AUDITFLOW_STORE]")

	s := &c.SQLite
	fs.StringVar(&s.Path, "sqlite-path", natsconn.Env("AUDITFLOW_SQLITE_PATH", "auditflow.db"), "SQLite: database file [AUDITFLOW_SQLITE_PATH]")
	fs.StringVar(&s.ChangeLog, "sqlite-changelog-table", sqlitestore.DefaultChangeLogTable, "SQLite: changeLog table")
	fs.StringVar(&s.Issues, "sqlite-issues-table", sqlitestore.DefaultIssuesTable, "SQLite: issues table")
	fs.StringVar(&s.Checkpoints, "sqlite-checkpoints-table", sqlitestore.DefaultCheckpointsTable, "SQLite: checkpoints table")

	m := &c.Mongo
	fs.StringVar(&m.URI, "mongo-uri", "", "MongoDB: connection URI; pool sizes, TLS, auth source and replica set are URI options (default $AUDITFLOW_MONGO_URI; prefer the variable or --mongo-uri-file: they keep the password out of ps)")
	fs.StringVar(&m.URIFile, "mongo-uri-file", natsconn.Env("AUDITFLOW_MONGO_URI_FILE", ""), "MongoDB: file holding the connection URI, instead of --mongo-uri [AUDITFLOW_MONGO_URI_FILE]")
	fs.StringVar(&m.Database, "mongo-database", natsconn.Env("AUDITFLOW_MONGO_DATABASE", mongostore.DefaultDatabase), "MongoDB: database, a dedicated one or the target system's own [AUDITFLOW_MONGO_DATABASE]")
	fs.StringVar(&m.ChangeLog, "mongo-changelog-collection", mongostore.DefaultChangeLogCollection, "MongoDB: changeLog collection")
	fs.StringVar(&m.Issues, "mongo-issues-collection", mongostore.DefaultIssuesCollection, "MongoDB: issues collection")
	fs.StringVar(&m.Checkpoints, "mongo-checkpoints-collection", mongostore.DefaultCheckpointsCollection, "MongoDB: checkpoints collection")
	fs.StringVar(&m.WriteConcern, "mongo-write-concern", "majority", "MongoDB: write concern w: majority or a number of nodes")
	fs.BoolVar(&m.Journal, "mongo-journal", true, "MongoDB: write concern j (wait for the journal)")
	fs.StringVar(&m.ReadConcern, "mongo-read-concern", "majority", "MongoDB: read concern: majority, local or linearizable")
	fs.StringVar(&m.ReadPreference, "mongo-read-preference", "primary", "MongoDB: read preference: primary, primaryPreferred, secondary, secondaryPreferred or nearest")
	fs.IntVar(&m.BatchSize, "mongo-batch", 0, "MongoDB: most statements per write command (0: 500, or 40 on FerretDB, which cannot answer 50 or more)")
	fs.BoolVar(&m.SkipIndexes, "mongo-skip-indexes", false, "MongoDB: do not create indexes (they are managed elsewhere)")

	d := &c.Dynamo
	fs.StringVar(&d.Region, "dynamo-region", natsconn.Env("AUDITFLOW_DYNAMO_REGION", ""), "DynamoDB: region (default from the AWS config: AWS_REGION, profile) [AUDITFLOW_DYNAMO_REGION]")
	redact.StringVar(fs, &d.Endpoint, "dynamo-endpoint", natsconn.Env("AUDITFLOW_DYNAMO_ENDPOINT", ""), "DynamoDB: endpoint `URL` override, e.g. http://localhost:8000 for DynamoDB Local [AUDITFLOW_DYNAMO_ENDPOINT]")
	fs.StringVar(&d.TablePrefix, "dynamo-table-prefix", natsconn.Env("AUDITFLOW_DYNAMO_TABLE_PREFIX", ""), "DynamoDB: prefix of every table name [AUDITFLOW_DYNAMO_TABLE_PREFIX]")
	fs.StringVar(&d.ChangeLog, "dynamo-changelog-table", dynamostore.DefaultChangeLogTable, "DynamoDB: changeLog table (after the prefix)")
	fs.StringVar(&d.Issues, "dynamo-issues-table", dynamostore.DefaultIssuesTable, "DynamoDB: issues table (after the prefix)")
	fs.StringVar(&d.Checkpoints, "dynamo-checkpoints-table", dynamostore.DefaultCheckpointsTable, "DynamoDB: checkpoints table (after the prefix)")
	fs.StringVar(&d.Billing, "dynamo-billing", "on-demand", "DynamoDB: billing mode of created tables: on-demand or provisioned")
	fs.Int64Var(&d.ReadCapacity, "dynamo-read-capacity", 0, "DynamoDB: read capacity units per table and index (provisioned)")
	fs.Int64Var(&d.WriteCapacity, "dynamo-write-capacity", 0, "DynamoDB: write capacity units per table and index (provisioned)")
	fs.BoolVar(&d.EventuallyConsistent, "dynamo-eventually-consistent", false, "DynamoDB: eventually consistent reads (half the cost; checkpoints may read stale)")
	fs.BoolVar(&d.SkipCreate, "dynamo-skip-create-tables", false, "DynamoDB: do not create tables (they come from infrastructure code)")
	fs.IntVar(&d.Concurrency, "dynamo-concurrency", dynamostore.DefaultConcurrency, "DynamoDB: requests in flight per store call")

	cb := &c.Couchbase
	redact.StringVar(fs, &cb.ConnStr, "couchbase-connstr", natsconn.Env("AUDITFLOW_COUCHBASE_CONNSTR", ""), "Couchbase: connection `string`, e.g. couchbases://cb.example.com [AUDITFLOW_COUCHBASE_CONNSTR]")
	fs.StringVar(&cb.User, "couchbase-user", natsconn.Env("AUDITFLOW_COUCHBASE_USER", ""), "Couchbase: user [AUDITFLOW_COUCHBASE_USER]")
	fs.StringVar(&cb.PasswordFile, "couchbase-password-file", natsconn.Env("AUDITFLOW_COUCHBASE_PASSWORD_FILE", ""), "Couchbase: file holding the password; or set AUDITFLOW_COUCHBASE_PASSWORD [AUDITFLOW_COUCHBASE_PASSWORD_FILE]")
	fs.StringVar(&cb.Bucket, "couchbase-bucket", natsconn.Env("AUDITFLOW_COUCHBASE_BUCKET", ""), "Couchbase: bucket (must exist) [AUDITFLOW_COUCHBASE_BUCKET]")
	fs.StringVar(&cb.Scope, "couchbase-scope", natsconn.Env("AUDITFLOW_COUCHBASE_SCOPE", couchbasestore.DefaultScope), "Couchbase: scope, created if missing [AUDITFLOW_COUCHBASE_SCOPE]")
	fs.StringVar(&cb.Collection, "couchbase-collection", natsconn.Env("AUDITFLOW_COUCHBASE_COLLECTION", couchbasestore.DefaultCollection), "Couchbase: collection, created if missing [AUDITFLOW_COUCHBASE_COLLECTION]")
	fs.StringVar(&cb.Durability, "couchbase-durability", "majority", "Couchbase: none, majority, majorityAndPersistActive or persistToMajority")
	fs.IntVar(&cb.Concurrency, "couchbase-concurrency", couchbasestore.DefaultConcurrency, "Couchbase: KV operations in flight per store call")
	fs.DurationVar(&cb.Timeout, "couchbase-timeout", 0, "Couchbase: per-operation KV timeout (0: the SDK's)")
}

// Validate checks the selected backend's settings and names the flag at
// fault. It reads secrets from the environment or their files.
func (c *Config) Validate() error {
	switch c.Kind {
	case "sqlite":
		if c.SQLite.Path == "" {
			return errors.New("--sqlite-path: required with --store sqlite")
		}
	case "mongo":
		m := &c.Mongo
		if m.URIFile != "" && m.loadedFile != m.URIFile {
			if m.URI != "" || os.Getenv("AUDITFLOW_MONGO_URI") != "" {
				return errors.New("--mongo-uri and --mongo-uri-file (or AUDITFLOW_MONGO_URI and AUDITFLOW_MONGO_URI_FILE): give one")
			}
			b, err := os.ReadFile(m.URIFile)
			if err != nil {
				return fmt.Errorf("--mongo-uri-file: %w", err)
			}
			m.URI, m.loadedFile = strings.TrimSpace(string(b)), m.URIFile
		}
		if m.URI == "" {
			m.URI = os.Getenv("AUDITFLOW_MONGO_URI")
		}
		if m.URI == "" {
			return errors.New("--mongo-uri (or AUDITFLOW_MONGO_URI, or --mongo-uri-file): required with --store mongo")
		}
		if !strings.HasPrefix(c.Mongo.URI, "mongodb://") && !strings.HasPrefix(c.Mongo.URI, "mongodb+srv://") {
			return errors.New("--mongo-uri: want mongodb:// or mongodb+srv://")
		}
		if _, err := c.writeConcern(); err != nil {
			return err
		}
		if _, err := c.readPref(); err != nil {
			return err
		}
		switch c.Mongo.ReadConcern {
		case "majority", "local", "linearizable":
		default:
			return fmt.Errorf("--mongo-read-concern: want majority, local or linearizable, got %q", c.Mongo.ReadConcern)
		}
	case "dynamodb":
		switch c.Dynamo.Billing {
		case "on-demand":
		case "provisioned":
			if c.Dynamo.ReadCapacity < 1 || c.Dynamo.WriteCapacity < 1 {
				return errors.New("--dynamo-read-capacity and --dynamo-write-capacity: required (at least 1) with --dynamo-billing provisioned")
			}
		default:
			return fmt.Errorf("--dynamo-billing: want on-demand or provisioned, got %q", c.Dynamo.Billing)
		}
		if c.Dynamo.Endpoint != "" {
			if u, err := url.Parse(c.Dynamo.Endpoint); err != nil || u.Scheme == "" || u.Host == "" {
				return fmt.Errorf("--dynamo-endpoint: %q is not a URL like http://localhost:8000", redact.URI(c.Dynamo.Endpoint))
			}
		}
	case "couchbase":
		cb := &c.Couchbase
		switch {
		case cb.ConnStr == "":
			return errors.New("--couchbase-connstr: required with --store couchbase")
		case cb.Bucket == "":
			return errors.New("--couchbase-bucket: required with --store couchbase")
		case cb.User == "":
			return errors.New("--couchbase-user: required with --store couchbase")
		}
		cb.password = os.Getenv("AUDITFLOW_COUCHBASE_PASSWORD")
		if cb.PasswordFile != "" {
			b, err := os.ReadFile(cb.PasswordFile)
			if err != nil {
				return fmt.Errorf("--couchbase-password-file: %w", err)
			}
			cb.password = strings.TrimRight(string(b), "\r\n")
		}
		if cb.password == "" {
			return errors.New("--couchbase-password-file (or AUDITFLOW_COUCHBASE_PASSWORD): required with --store couchbase")
		}
		if _, err := c.durability(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("--store: want one of %s, got %q", strings.Join(Kinds, ", "), c.Kind)
	}
	return nil
}

func (c *Config) writeConcern() (*writeconcern.WriteConcern, error) {
	j := c.Mongo.Journal
	if c.Mongo.WriteConcern == "majority" {
		return &writeconcern.WriteConcern{W: writeconcern.WCMajority, Journal: &j}, nil
	}
	n, err := strconv.Atoi(c.Mongo.WriteConcern)
	if err != nil || n < 1 {
		return nil, fmt.Errorf("--mongo-write-concern: want majority or a number of nodes ≥ 1, got %q", c.Mongo.WriteConcern)
	}
	return &writeconcern.WriteConcern{W: n, Journal: &j}, nil
}

func (c *Config) readPref() (*readpref.ReadPref, error) {
	mode, err := readpref.ModeFromString(c.Mongo.ReadPreference)
	if err != nil {
		return nil, fmt.Errorf("--mongo-read-preference: %w", err)
	}
	return readpref.New(mode)
}

func (c *Config) durability() (gocb.DurabilityLevel, error) {
	switch c.Couchbase.Durability {
	case "none":
		return gocb.DurabilityLevelNone, nil
	case "majority":
		return gocb.DurabilityLevelMajority, nil
	case "majorityAndPersistActive":
		return gocb.DurabilityLevelMajorityAndPersistOnMaster, nil
	case "persistToMajority":
		return gocb.DurabilityLevelPersistToMajority, nil
	}
	return 0, fmt.Errorf("--couchbase-durability: want none, majority, majorityAndPersistActive or persistToMajority, got %q", c.Couchbase.Durability)
}

// Describe names the configured store for logs, without secrets.
func (c *Config) Describe() string {
	switch c.Kind {
	case "sqlite":
		return "sqlite " + c.SQLite.Path
	case "mongo":
		return "mongo " + redact.URI(c.Mongo.URI) + " database " + c.Mongo.Database
	case "dynamodb":
		where := c.Dynamo.Region
		if c.Dynamo.Endpoint != "" {
			where = redact.URI(c.Dynamo.Endpoint)
		}
		return "dynamodb " + where + " tables " + c.Dynamo.TablePrefix + "*"
	case "couchbase":
		return "couchbase " + redact.URI(c.Couchbase.ConnStr) + " " + c.Couchbase.Bucket + "." + c.Couchbase.Scope + "." + c.Couchbase.Collection
	}
	return c.Kind
}

// Secrets returns the values of the configured secrets, once Validate has
// read them, for masking output that may show them: the credentials in the
// MongoDB URI, the Couchbase connection string and the DynamoDB endpoint,
// and the Couchbase password.
func (c *Config) Secrets() []string {
	out := redact.Secrets(c.Mongo.URI)
	out = append(out, redact.Secrets(c.Couchbase.ConnStr)...)
	out = append(out, redact.Secrets(c.Dynamo.Endpoint)...)
	if c.Couchbase.password != "" {
		out = append(out, c.Couchbase.password)
	}
	return out
}

// Open validates the configuration and opens the store; the returned
// close function closes the store and its client. Its errors are masked
// with Secrets: a database client may quote what it was given.
func (c *Config) Open(ctx context.Context, log *slog.Logger) (stores.Store, func(), error) {
	if err := c.Validate(); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", stores.ErrInvalidConfig, err)
	}
	st, closeStore, err := c.open(ctx, log)
	return st, closeStore, redact.NewMasker(c.Secrets()...).Err(err)
}

func (c *Config) open(ctx context.Context, log *slog.Logger) (stores.Store, func(), error) {
	switch c.Kind {
	case "sqlite":
		s := c.SQLite
		if c.ReadOnly || c.CheckOnly {
			if _, err := os.Stat(s.Path); errors.Is(err, os.ErrNotExist) {
				return nil, nil, fmt.Errorf("%w: --sqlite-path %s: no such database file (this command reads only and creates nothing: check the path; the projector or auditflow replay creates it)", ErrStoreMissing, s.Path)
			}
		}
		st, err := sqlitestore.Open(ctx, s.Path, sqlitestore.Config{ChangeLogTable: s.ChangeLog, IssuesTable: s.Issues,
			CheckpointsTable: s.Checkpoints, SkipSchema: c.CheckOnly, ReadOnly: c.ReadOnly})
		if err != nil {
			return nil, nil, SQLiteOpenError(s.Path, err)
		}
		return st, func() { _ = st.Close() }, nil
	case "mongo":
		return c.openMongo(ctx, log)
	case "dynamodb":
		return c.openDynamo(ctx, log)
	default:
		return c.openCouchbase(ctx, log)
	}
}

func (c *Config) openMongo(ctx context.Context, log *slog.Logger) (stores.Store, func(), error) {
	m := c.Mongo
	wc, _ := c.writeConcern()
	rp, _ := c.readPref()
	client, err := mongo.Connect(options.Client().ApplyURI(m.URI).SetAppName("auditflow"))
	if err != nil {
		return nil, nil, fmt.Errorf("mongo: %s: %w", redact.URI(m.URI), err)
	}
	closeClient := func() { _ = client.Disconnect(context.Background()) }
	st, err := mongostore.New(ctx, client, mongostore.Config{
		Database: m.Database, ChangeLogCollection: m.ChangeLog, IssuesCollection: m.Issues,
		CheckpointsCollection: m.Checkpoints, WriteConcern: wc, ReadConcern: &readconcern.ReadConcern{Level: m.ReadConcern},
		ReadPreference: rp, BatchSize: m.BatchSize, SkipIndexes: m.SkipIndexes || c.CheckOnly || c.ReadOnly, Logger: log,
	})
	if err != nil {
		closeClient()
		return nil, nil, fmt.Errorf("mongo %s: %w (check the URI, that the user may read and write database %s and create indexes)", redact.URI(m.URI), err, m.Database)
	}
	return st, func() { _ = st.Close(); closeClient() }, nil
}

func (c *Config) openDynamo(ctx context.Context, log *slog.Logger) (stores.Store, func(), error) {
	d := c.Dynamo
	var opts []func(*awsconfig.LoadOptions) error
	if d.Region != "" {
		opts = append(opts, awsconfig.WithRegion(d.Region))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("dynamodb: AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, nil, fmt.Errorf("%w: --dynamo-region (or AWS_REGION): no region configured", stores.ErrInvalidConfig)
	}
	client := dynamodb.NewFromConfig(awsCfg, func(o *dynamodb.Options) {
		if d.Endpoint != "" {
			o.BaseEndpoint = aws.String(d.Endpoint)
		}
	})
	billing := types.BillingModePayPerRequest
	if d.Billing == "provisioned" {
		billing = types.BillingModeProvisioned
	}
	st, err := dynamostore.New(ctx, client, dynamostore.Config{
		TablePrefix: d.TablePrefix, ChangeLogTable: d.ChangeLog, IssuesTable: d.Issues, CheckpointsTable: d.Checkpoints,
		EventuallyConsistentReads: d.EventuallyConsistent, BillingMode: billing, ReadCapacity: d.ReadCapacity,
		WriteCapacity: d.WriteCapacity, SkipCreateTables: d.SkipCreate || c.CheckOnly || c.ReadOnly, Concurrency: d.Concurrency, Logger: log,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("dynamodb: %w (check the region/endpoint, the credentials, and permission to describe, create, read and write tables %s*)", err, d.TablePrefix)
	}
	return st, func() { _ = st.Close() }, nil
}

func (c *Config) openCouchbase(ctx context.Context, log *slog.Logger) (stores.Store, func(), error) {
	cb := c.Couchbase
	dur, _ := c.durability()
	cluster, err := gocb.Connect(cb.ConnStr, gocb.ClusterOptions{
		Authenticator: gocb.PasswordAuthenticator{Username: cb.User, Password: cb.password},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("couchbase %s: %w", redact.URI(cb.ConnStr), err)
	}
	closeCluster := func() { _ = cluster.Close(nil) }
	st, err := couchbasestore.New(ctx, cluster, couchbasestore.Config{
		Bucket: cb.Bucket, Scope: cb.Scope, Collection: cb.Collection, Durability: dur,
		Concurrency: cb.Concurrency, OpTimeout: cb.Timeout, ReadOnly: c.ReadOnly || c.CheckOnly, Logger: log,
	})
	if err != nil {
		closeCluster()
		return nil, nil, fmt.Errorf("couchbase %s: %w (check the connection string, user %s's access to bucket %s, and that it may create scopes and collections)", redact.URI(cb.ConnStr), err, cb.User, cb.Bucket)
	}
	return st, func() { _ = st.Close(); closeCluster() }, nil
}

// SQLiteOpenError wraps an error from opening the SQLite database at path
// with the path and, when SQLite cannot open the file (its bare "unable to
// open database file (14)" names neither), the likely cause: a missing
// directory, or one this user may not write.
func SQLiteOpenError(path string, err error) error {
	if err == nil || !strings.Contains(err.Error(), "unable to open database file") {
		return fmt.Errorf("sqlite %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	hint := ""
	switch fi, serr := os.Stat(dir); {
	case errors.Is(serr, os.ErrNotExist):
		hint = "directory " + dir + " does not exist: create it, or fix the path"
	case serr != nil:
		hint = serr.Error()
	case !fi.IsDir():
		hint = dir + " is not a directory"
	case !writable(dir):
		hint = "directory " + dir + " is not writable by this user (SQLite also writes its -wal and -shm files there)"
	default:
		hint = "check the file's permissions, and that it is an SQLite database"
	}
	return fmt.Errorf("sqlite %s: %w (%s)", path, err, hint)
}

// writable reports whether this process can create a file in dir.
func writable(dir string) bool {
	f, err := os.CreateTemp(dir, ".auditflow-probe-*")
	if err != nil {
		return false
	}
	name := f.Name()
	_ = f.Close()
	_ = os.Remove(name)
	return true
}

// ProbeWrite checks, without leaving anything behind, that the store may
// be written: for SQLite it takes the database's write lock (BEGIN
// IMMEDIATE) and rolls back, on an existing file only; the other backends
// write a probe row outside the audit data through st and remove it
// (stores.WriteProber). It returns ok false with no error when the backend
// has no such probe.
func (c *Config) ProbeWrite(ctx context.Context, st stores.Store) (ok bool, err error) {
	if c.Kind != "sqlite" {
		p, isProber := st.(stores.WriteProber)
		if !isProber {
			return false, nil
		}
		if err := p.ProbeWrite(ctx); err != nil {
			return false, err
		}
		return true, nil
	}
	path := c.SQLite.Path
	if _, err := os.Stat(path); err != nil {
		return false, fmt.Errorf("%w: --sqlite-path %s: %w", ErrStoreMissing, path, err)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=rw&_pragma=busy_timeout(5000)")
	if err != nil {
		return false, SQLiteOpenError(path, err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return false, SQLiteOpenError(path, err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return false, SQLiteOpenError(path, err)
	}
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		return false, SQLiteOpenError(path, err)
	}
	return true, nil
}

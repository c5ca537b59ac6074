package couchbasestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"sync/atomic"
	"time"

	"github.com/couchbase/gocb/v2"

	"github.com/auditflow/auditflow/stores"
)

// Config configures a Store. Zero fields take the defaults shown; Bucket is
// required.
type Config struct {
	// Bucket must exist; the store does not create buckets.
	Bucket string
	// Scope and Collection hold this store's documents and nothing else's;
	// they are created if missing. Default "auditflow" and "audit".
	Scope      string
	Collection string
	// Durability of every write. Default gocb.DurabilityLevelMajority: Apply
	// returns only once its writes would survive the loss of a node, as the
	// projector acknowledges on return. Single-node servers with replicas
	// need gocb.DurabilityLevelNone.
	Durability gocb.DurabilityLevel
	// Concurrency bounds the KV operations one call keeps in flight.
	// Default 32.
	Concurrency int
	// OpTimeout bounds each KV operation; 0 uses the cluster's KV timeouts.
	// A deadline on the caller's context applies as well.
	OpTimeout time.Duration
	// ConflictTimeout bounds how long one document update keeps retrying
	// while other writers keep changing that document. Default 30s.
	ConflictTimeout time.Duration
	// SetupTimeout bounds New: waiting for the bucket and creating the
	// scope and collection. Default 30s.
	SetupTimeout time.Duration
	// ReadOnly opens an existing store for reading: New creates no scope,
	// collection or meta document, and fails if they are missing.
	ReadOnly bool
	// Logger receives debug logs; nil discards them.
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultScope           = "auditflow"
	DefaultCollection      = "audit"
	DefaultDurability      = gocb.DurabilityLevelMajority
	DefaultConcurrency     = 32
	DefaultConflictTimeout = 30 * time.Second
	DefaultSetupTimeout    = 30 * time.Second
)

var (
	bucketName = regexp.MustCompile(`^[A-Za-z0-9._%-]{1,100}$`)
	// Couchbase scope and collection names: no leading _ or % except _default.
	keyspaceName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_%-]{0,250}$`)
)

// Validate fills in defaults and checks the values.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: couchbasestore: %s", stores.ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if !bucketName.MatchString(c.Bucket) {
		return bad("Bucket %q is not a bucket name", c.Bucket)
	}
	if c.Scope == "" {
		c.Scope = DefaultScope
	}
	if c.Collection == "" {
		c.Collection = DefaultCollection
	}
	for _, n := range []struct{ what, v string }{{"Scope", c.Scope}, {"Collection", c.Collection}} {
		if n.v != "_default" && !keyspaceName.MatchString(n.v) {
			return bad("%s %q is not a scope or collection name", n.what, n.v)
		}
	}
	switch {
	case c.Durability == gocb.DurabilityLevelUnknown:
		c.Durability = DefaultDurability
	case c.Durability > gocb.DurabilityLevelPersistToMajority:
		return bad("unknown durability level %d", c.Durability)
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Concurrency < 1 || c.Concurrency > 1024 {
		return bad("Concurrency %d is outside 1..1024", c.Concurrency)
	}
	if c.ConflictTimeout == 0 {
		c.ConflictTimeout = DefaultConflictTimeout
	}
	if c.SetupTimeout == 0 {
		c.SetupTimeout = DefaultSetupTimeout
	}
	if c.OpTimeout < 0 || c.ConflictTimeout < 0 || c.SetupTimeout < 0 {
		return bad("negative timeout")
	}
	return nil
}

// Store is the Couchbase audit store.
type Store struct {
	cfg    Config
	coll   *gocb.Collection
	log    *slog.Logger
	closed atomic.Bool
}

var _ stores.Store = (*Store)(nil)

// New opens the store in cfg's bucket, creating its scope and collection if
// missing. It takes the Cluster rather than a Bucket because the Config
// names the bucket along with the scope and collection, and validates them
// together; a Cluster is the caller's one long-lived connection, and
// opening a Bucket from it is cheap. The caller keeps ownership of cluster:
// Close does not close it.
func New(ctx context.Context, cluster *gocb.Cluster, cfg Config) (*Store, error) {
	if cluster == nil {
		return nil, fmt.Errorf("%w: couchbasestore: nil cluster", stores.ErrInvalidConfig)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.SetupTimeout)
	defer cancel()
	b := cluster.Bucket(cfg.Bucket)
	// Bucket.WaitUntilReady, not Cluster's: the bucket is what KV needs.
	if err := b.WaitUntilReady(cfg.SetupTimeout, &gocb.WaitUntilReadyOptions{Context: sctx}); err != nil {
		if errors.Is(err, gocb.ErrBucketNotFound) {
			err = fmt.Errorf("%w: %w", stores.ErrInvalidConfig, err)
		}
		return nil, fmt.Errorf("couchbasestore: bucket %s not ready: %w", cfg.Bucket, stores.ContextError(ctx, err))
	}
	if err := ensureCollection(sctx, b, cfg); err != nil {
		return nil, fmt.Errorf("couchbasestore: %w", stores.ContextError(ctx, err))
	}
	s := &Store{cfg: cfg, coll: b.Scope(cfg.Scope).Collection(cfg.Collection), log: log}
	if cfg.ReadOnly {
		var m metaDoc
		switch _, exists, err := s.get(sctx, metaKey, &m); {
		case err != nil:
			return nil, fmt.Errorf("couchbasestore: read meta: %w", stores.ContextError(ctx, err))
		case !exists:
			return nil, fmt.Errorf("couchbasestore: %s.%s.%s holds no audit store (opened read-only: nothing was created)", cfg.Bucket, cfg.Scope, cfg.Collection)
		}
		return s, nil
	}
	if err := s.initMeta(sctx); err != nil {
		return nil, fmt.Errorf("couchbasestore: %w", stores.ContextError(ctx, err))
	}
	return s, nil
}

// ensureCollection creates the scope and collection unless they exist.
// Listing first means a user without manage rights can open a store that
// exists; "exists" errors mean a concurrent New created it first.
func ensureCollection(ctx context.Context, b *gocb.Bucket, cfg Config) error {
	mgr := b.CollectionsV2()
	scopes, err := mgr.GetAllScopes(&gocb.GetAllScopesOptions{Context: ctx})
	if err != nil {
		return fmt.Errorf("list scopes of %s: %w", cfg.Bucket, err)
	}
	haveScope, haveColl := false, false
	for _, sc := range scopes {
		if sc.Name == cfg.Scope {
			haveScope = true
			haveColl = slices.ContainsFunc(sc.Collections, func(c gocb.CollectionSpec) bool { return c.Name == cfg.Collection })
		}
	}
	if cfg.ReadOnly {
		if (!haveScope && cfg.Scope != "_default") || (!haveColl && cfg.Collection != "_default") {
			return fmt.Errorf("collection %s.%s.%s does not exist (opened read-only: nothing was created)", cfg.Bucket, cfg.Scope, cfg.Collection)
		}
		return nil
	}
	if !haveScope && cfg.Scope != "_default" {
		err := mgr.CreateScope(cfg.Scope, &gocb.CreateScopeOptions{Context: ctx})
		if err != nil && !errors.Is(err, gocb.ErrScopeExists) {
			return fmt.Errorf("create scope %s: %w", cfg.Scope, err)
		}
	}
	if !haveColl && cfg.Collection != "_default" {
		err := mgr.CreateCollection(cfg.Scope, cfg.Collection, nil, &gocb.CreateCollectionOptions{Context: ctx})
		if err != nil && !errors.Is(err, gocb.ErrCollectionExists) {
			return fmt.Errorf("create collection %s.%s: %w", cfg.Scope, cfg.Collection, err)
		}
	}
	return nil
}

// initMeta creates the meta document on first open and checks its layout.
// On a real server a new collection takes a moment to reach every node;
// the SDK retries while it is unknown. The older layout opens, so that a
// replay can reset it, but every call but Reset, CheckSchema and Close
// refuses it (see begin).
func (s *Store) initMeta(ctx context.Context) error {
	var m metaDoc
	err := s.retry(ctx, func() error {
		_, exists, err := s.get(ctx, metaKey, &m)
		if err != nil || exists {
			return err
		}
		m = metaDoc{Layout: layoutVersion}
		return s.insert(ctx, metaKey, m)
	})
	if err != nil {
		return fmt.Errorf("meta document: %w", err)
	}
	switch m.Layout {
	case layoutVersion:
	case olderLayout:
		s.log.Warn("couchbasestore: " + s.layoutError(m.Layout).Error())
	default:
		return s.layoutError(m.Layout)
	}
	return nil
}

// layoutError says why this version cannot use a collection of layout
// and, for the older layout, how to rebuild it.
func (s *Store) layoutError(layout int) error {
	if layout == olderLayout {
		return fmt.Errorf("%w: collection %s.%s holds layout %d, in which changeLog rows are keyed by event id and an event "+
			"published again hides its first row: rebuild the store from the stream with "+
			"`auditflow --store couchbase replay --reset` (stop its projectors first), or replay into another collection",
			stores.ErrInvalidConfig, s.cfg.Scope, s.cfg.Collection, layout)
	}
	return fmt.Errorf("%w: collection %s.%s holds layout %d; this version reads layout %d",
		stores.ErrInvalidConfig, s.cfg.Scope, s.cfg.Collection, layout, layoutVersion)
}

// begin checks that a call may start and returns the current generation's
// keyspace. Every call reads the meta document anyway, for the
// generation, so it refuses a layout other than this version's there: a
// store of the older layout stays refused, by every process, until a
// Reset rebuilds it. A missing meta document reads as generation 0 (what
// CheckSchema reports).
func (s *Store) begin(ctx context.Context) (keyspace, error) {
	m, exists, err := s.meta(ctx)
	if err != nil {
		return keyspace{}, err
	}
	if exists && m.Layout != layoutVersion {
		return keyspace{}, fmt.Errorf("couchbasestore: %w", s.layoutError(m.Layout))
	}
	return keyspaceOf(m.Gen), nil
}

// meta checks that a call may start and reads the meta document.
func (s *Store) meta(ctx context.Context) (metaDoc, bool, error) {
	var m metaDoc
	if s.closed.Load() {
		return m, false, stores.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return m, false, fmt.Errorf("couchbasestore: %w", err)
	}
	_, exists, err := s.get(ctx, metaKey, &m)
	if err != nil {
		return m, false, s.fail(ctx, "read meta", err)
	}
	return m, exists, nil
}

// fail wraps an error of operation op: the context's error first if it is
// done, and the stores sentinel for a document too large to write.
func (s *Store) fail(ctx context.Context, op string, err error) error {
	if errors.Is(err, gocb.ErrValueTooLarge) {
		err = fmt.Errorf("%w: %w", stores.ErrInvalidRecord, err)
	}
	return fmt.Errorf("couchbasestore: %s: %w", op, stores.ContextError(ctx, err))
}

// Checkpoint returns the contiguous checkpoint recorded under name (see
// stores.Batch.Through), 0 if none.
func (s *Store) Checkpoint(ctx context.Context, name string) (uint64, error) {
	ks, err := s.begin(ctx)
	if err != nil {
		return 0, err
	}
	var d checkpointDoc
	if _, _, err := s.get(ctx, ks.checkpoint(name), &d); err != nil {
		return 0, s.fail(ctx, "checkpoint "+name, err)
	}
	return d.Seq, nil
}

// ProbeWrite checks that the store may be written: it inserts a probe
// document, outside the audit layout, and removes it.
func (s *Store) ProbeWrite(ctx context.Context) error {
	if _, err := s.begin(ctx); err != nil {
		return err
	}
	key := "auditflow:probe:" + stores.ProbeName()
	if err := s.insert(ctx, key, map[string]string{"probe": "auditflow test-connection"}); err != nil {
		return s.fail(ctx, "probe write", err)
	}
	if err := s.remove(ctx, key); err != nil {
		return s.fail(ctx, "probe remove", err)
	}
	return nil
}

// Close marks the store closed. The cluster stays open: it is the caller's.
func (s *Store) Close() error {
	s.closed.Store(true)
	return nil
}

package lock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// streamName is the JetStream stream that holds a KV bucket.
func streamName(bucket string) string { return "KV_" + bucket }

// bucketStreamConfig is the lock bucket's stream: nats.go's KV layout
// (subjects $KV.<bucket>.>, direct gets, one entry per key, discard new),
// but refusing rollups, purges and message deletes, which nats.go's
// CreateKeyValue cannot express (it always allows rollups, for
// KeyValue.Purge). A lock is then removed only by a write on its own key,
// which a deployment's permissions scope per pipeline: no client can
// empty the bucket, or another pipeline's key, with one publish. firstSeq
// > 1 starts the fencing tokens there.
func bucketStreamConfig(bucket string, replicas int, lease time.Duration, firstSeq uint64) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              streamName(bucket),
		Description:       "auditflow pipeline locks",
		Subjects:          []string{"$KV." + bucket + ".>"},
		MaxMsgsPerSubject: 1,
		MaxAge:            lease,
		MaxBytes:          -1,
		MaxMsgs:           -1,
		MaxMsgSize:        -1,
		MaxConsumers:      -1,
		Storage:           jetstream.FileStorage,
		Replicas:          replicas,
		Discard:           jetstream.DiscardNew,
		Duplicates:        min(lease, 2*time.Minute),
		AllowDirect:       true,
		AllowRollup:       false,
		DenyPurge:         true,
		DenyDelete:        true,
		FirstSeq:          firstSeq,
	}
}

// BucketStreamConfig is the stream of the lock bucket named bucket as
// auditflow creates it (fencing tokens from 1), with replicas and lease
// (its TTL): what auditflow init compares an existing bucket with.
func BucketStreamConfig(bucket string, replicas int, lease time.Duration) jetstream.StreamConfig {
	return bucketStreamConfig(bucket, replicas, lease, 0)
}

// unsafeSettings lists what in a lock bucket's configuration lets a client
// remove locks other than by a revision-checked write on one key.
func unsafeSettings(c jetstream.StreamConfig) []string {
	var out []string
	if c.AllowRollup {
		out = append(out, "allows rollups")
	}
	if !c.DenyPurge {
		out = append(out, "allows purges")
	}
	if !c.DenyDelete {
		out = append(out, "allows message deletes")
	}
	return out
}

// openBucket opens (or, with cfg.CreateBucket, creates) the lock bucket,
// checks that it is safe (or, with cfg.CreateBucket, makes it so), and
// settles cfg.Lease with it.
func openBucket(ctx context.Context, js jetstream.JetStream, cfg *Config, log *slog.Logger) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, streamName(cfg.Bucket))
	if errors.Is(err, jetstream.ErrStreamNotFound) && !cfg.CreateBucket {
		return nil, fmt.Errorf("%w: lock bucket %s (stream KV_%s) does not exist; auditflow creates it only deliberately: run `auditflow init` "+
			"(as the admin user) once for a new deployment, or after the bucket was deleted (it then hands out fencing tokens above the highest on the audit stream)",
			ErrNoBucket, cfg.Bucket, cfg.Bucket)
	}
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = createBucket(ctx, js, cfg, log)
	}
	if err != nil {
		return nil, fmt.Errorf("lock: bucket %s: %w", cfg.Bucket, err)
	}
	info := s.CachedInfo()
	if info.Config.MaxMsgsPerSubject < 1 {
		return nil, fmt.Errorf("%w: stream %s is not a key-value bucket (no per-subject limit)", ErrInvalidConfig, info.Config.Name)
	}
	if problems := unsafeSettings(info.Config); len(problems) > 0 {
		if !cfg.CreateBucket {
			return nil, fmt.Errorf("%w: lock bucket %s %s: anyone who may write one lock key could remove every lock (one publish with Nats-Rollup: all), "+
				"and a waiting runner would take a live holder's. Make it refuse them, in place, keeping its locks: `auditflow init` lists what differs, "+
				"and the edit (nats stream edit KV_%s --no-allow-rollup --deny-purge --deny-delete) is break-glass in a deployment (docs/security.md, Break-glass)",
				ErrUnsafeBucket, cfg.Bucket, strings.Join(problems, ", "), cfg.Bucket)
		}
		if s, err = secure(ctx, js, info.Config); err != nil {
			return nil, fmt.Errorf("lock: bucket %s: make it refuse rollups and purges: %w", cfg.Bucket, err)
		}
		log.Warn("lock bucket updated: it now refuses rollups, purges and message deletes", "bucket", cfg.Bucket, "was", strings.Join(problems, ", "))
		info = s.CachedInfo()
	}
	ttl := info.Config.MaxAge
	if cfg.Lease == 0 {
		cfg.Lease = ttl
	}
	if ttl != cfg.Lease {
		return nil, fmt.Errorf("%w: bucket %s has a lease (TTL) of %s, this locker is configured for %s",
			ErrInvalidConfig, cfg.Bucket, ttl, cfg.Lease)
	}
	return s, nil
}

// createBucket creates the bucket with its tokens above cfg.TokenFloor's.
func createBucket(ctx context.Context, js jetstream.JetStream, cfg *Config, log *slog.Logger) (jetstream.Stream, error) {
	lease := cfg.Lease
	if lease == 0 {
		lease = DefaultLease
	}
	var floor uint64
	if cfg.TokenFloor != nil {
		var err error
		if floor, err = cfg.TokenFloor(ctx); err != nil {
			return nil, fmt.Errorf("the highest fencing token handed out before: %w", err)
		}
	}
	if floor > 0 {
		// Tokens on the stream: the bucket existed and was deleted. Its
		// holders lost their locks with it but may act until their leases
		// run out — a lease after their last refresh, before the deletion,
		// before now. Until then the bucket stays missing, so no lock is
		// taken beside them; then the floor is read again, with whatever
		// they recorded meanwhile.
		log.Info("lock bucket was deleted: waiting a lease before creating it again, until every holder of the deleted one has stopped",
			"bucket", cfg.Bucket, "lease", lease, "tokenFloor", floor)
		t := time.NewTimer(lease)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		again, err := cfg.TokenFloor(ctx)
		if err != nil {
			return nil, fmt.Errorf("the highest fencing token handed out before: %w", err)
		}
		floor = max(floor, again)
	}
	var first uint64
	if floor > 0 {
		first = floor + 1
	}
	s, err := js.CreateStream(ctx, bucketStreamConfig(cfg.Bucket, cfg.Replicas, lease, first))
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return js.Stream(ctx, streamName(cfg.Bucket)) // created concurrently
	}
	if err != nil {
		return nil, err
	}
	log.Info("lock bucket created", "bucket", cfg.Bucket, "lease", lease, "firstToken", max(first, 1), "tokenFloor", floor)
	return s, nil
}

// secure updates a bucket's stream in place so that it refuses rollups,
// purges and message deletes. Nothing else changes: the locks in it stay.
func secure(ctx context.Context, js jetstream.JetStream, c jetstream.StreamConfig) (jetstream.Stream, error) {
	c.AllowRollup, c.DenyPurge, c.DenyDelete = false, true, true
	return js.UpdateStream(ctx, c)
}

// SecureBucket makes an existing lock bucket refuse rollups, purges and
// message deletes, in place (the locks in it stay), unless dryRun, and
// returns what it found unsafe: nothing when the bucket already refuses
// them. A bucket made by an older auditflow, or by nats kv add, allows
// rollups and purges. It needs the right to edit the bucket, which a
// deployment gives no role (auditflow init reports such a bucket instead:
// the edit is break-glass). It returns
// jetstream.ErrStreamNotFound if the bucket does not exist.
func SecureBucket(ctx context.Context, js jetstream.JetStream, bucket string, dryRun bool) ([]string, error) {
	s, err := js.Stream(ctx, streamName(bucket))
	if err != nil {
		return nil, err
	}
	problems := unsafeSettings(s.CachedInfo().Config)
	if len(problems) == 0 || dryRun {
		return problems, nil
	}
	if _, err := secure(ctx, js, s.CachedInfo().Config); err != nil {
		return problems, fmt.Errorf("lock: bucket %s: make it refuse rollups and purges: %w", bucket, err)
	}
	return problems, nil
}

package couchbasestore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/couchbase/gocb/v2"

	"github.com/auditflow/auditflow/stores"
)

// get reads key into v. A missing document is not an error: exists is false.
func (s *Store) get(ctx context.Context, key string, v any) (cas gocb.Cas, exists bool, err error) {
	res, err := s.coll.Get(key, &gocb.GetOptions{Timeout: s.cfg.OpTimeout, Context: ctx})
	if errors.Is(err, gocb.ErrDocumentNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if err := res.Content(v); err != nil {
		return 0, false, fmt.Errorf("decode %s: %w", key, err)
	}
	return res.Cas(), true, nil
}

func (s *Store) insert(ctx context.Context, key string, v any) error {
	_, err := s.coll.Insert(key, v, &gocb.InsertOptions{
		DurabilityLevel: s.cfg.Durability, Timeout: s.cfg.OpTimeout, Context: ctx,
	})
	return err
}

func (s *Store) replace(ctx context.Context, key string, v any, cas gocb.Cas) error {
	_, err := s.coll.Replace(key, v, &gocb.ReplaceOptions{
		Cas: cas, DurabilityLevel: s.cfg.Durability, Timeout: s.cfg.OpTimeout, Context: ctx,
	})
	return err
}

// upsertPaths sets paths (creating the document and parent objects as
// needed), at most maxSpecs per round trip. Each MutateIn is atomic on the
// server, so concurrent writers of one document need no CAS: these are
// set-inserts, the same whoever writes them and however often.
func (s *Store) upsertPaths(ctx context.Context, key string, specs []gocb.MutateInSpec) error {
	for len(specs) > 0 {
		n := min(len(specs), maxSpecs)
		_, err := s.coll.MutateIn(key, specs[:n], &gocb.MutateInOptions{
			StoreSemantic: gocb.StoreSemanticsUpsert, DurabilityLevel: s.cfg.Durability,
			Timeout: s.cfg.OpTimeout, Context: ctx,
		})
		if err != nil {
			return fmt.Errorf("update %s: %w", key, err)
		}
		specs = specs[n:]
	}
	return nil
}

func upsertPath(path string, v any) gocb.MutateInSpec {
	return gocb.UpsertSpec(path, v, &gocb.UpsertSpecOptions{CreatePath: true})
}

// remove deletes key; a missing document is fine.
func (s *Store) remove(ctx context.Context, key string) error {
	_, err := s.coll.Remove(key, &gocb.RemoveOptions{
		DurabilityLevel: s.cfg.Durability, Timeout: s.cfg.OpTimeout, Context: ctx,
	})
	if err != nil && !errors.Is(err, gocb.ErrDocumentNotFound) {
		return fmt.Errorf("remove %s: %w", key, err)
	}
	return nil
}

// conflict reports whether err means another writer changed the document
// between our read and write. A stale CAS comes back as ErrCasMismatch
// from Replace but as ErrDocumentExists from some servers' MutateIn (and
// gocaves'); an Insert that lost a race is ErrDocumentExists; a Replace of
// a document that was removed meanwhile is ErrDocumentNotFound.
func conflict(err error) bool {
	return errors.Is(err, gocb.ErrCasMismatch) || errors.Is(err, gocb.ErrDocumentExists) ||
		errors.Is(err, gocb.ErrDocumentNotFound)
}

// retry runs a read-modify-write attempt until it does not conflict, with
// jittered exponential backoff, for at most ConflictTimeout.
func (s *Store) retry(ctx context.Context, attempt func() error) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = time.Millisecond
	bo.MaxInterval = 100 * time.Millisecond
	bo.MaxElapsedTime = s.cfg.ConflictTimeout
	bo.Reset()
	tries := 0
	err := backoff.Retry(func() error {
		tries++
		err := attempt()
		if err == nil || conflict(err) {
			return err
		}
		return backoff.Permanent(err)
	}, backoff.WithContext(bo, ctx))
	if err != nil && conflict(err) {
		return fmt.Errorf("still conflicting after %d attempts: %w", tries, err)
	}
	if tries > 3 {
		s.log.Debug("couchbasestore: contended update", "attempts", tries)
	}
	return err
}

// update changes the document at key under CAS: it reads it, lets change
// modify it (change reports whether it did), and writes it back, inserting
// it if it was missing; beforeCreate runs first in that case. It retries
// from the read whenever another writer got in between, so change must be
// a pure function of the document it is given.
func update[T any](ctx context.Context, s *Store, key string, beforeCreate func(context.Context) error, change func(d *T, exists bool) bool) error {
	return s.retry(ctx, func() error {
		var d T
		cas, exists, err := s.get(ctx, key, &d)
		if err != nil {
			return err
		}
		if !change(&d, exists) {
			return nil
		}
		if exists {
			return s.replace(ctx, key, d, cas)
		}
		if beforeCreate != nil {
			if err := beforeCreate(ctx); err != nil {
				return err
			}
		}
		return s.insert(ctx, key, d)
	})
}

// task is one unit of work for run.
type task func(ctx context.Context) error

// run runs tasks with at most Concurrency in flight. The first error
// cancels the rest and is returned; every goroutine has ended on return.
func (s *Store) run(ctx context.Context, tasks []task) error {
	return stores.Parallel(ctx, s.cfg.Concurrency, len(tasks), func(ctx context.Context, i int) error { return tasks[i](ctx) })
}

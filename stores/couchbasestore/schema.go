package couchbasestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/couchbase/gocb/v2"

	"github.com/auditflow/auditflow/stores"
)

// The store checks its schema; it does not repair rows (see doc.go): the
// operator tools rebuild it by Reset and replay instead.
var _ stores.SchemaChecker = (*Store)(nil)

// CheckSchema reports what is not as the store expects: the bucket, scope
// or collection missing, or the meta document missing, unreadable or of a
// layout this version does not read. The store has no indexes to check:
// it uses the key-value service only. It creates and changes nothing.
func (s *Store) CheckSchema(ctx context.Context) ([]string, error) {
	if s.closed.Load() {
		return nil, stores.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("couchbasestore: check schema: %w", err)
	}
	cfg := s.cfg
	scopes, err := s.coll.Bucket().CollectionsV2().GetAllScopes(&gocb.GetAllScopesOptions{Context: ctx, Timeout: cfg.OpTimeout})
	switch {
	case errors.Is(err, gocb.ErrBucketNotFound):
		return []string{fmt.Sprintf("bucket %s is missing", cfg.Bucket)}, nil
	case err != nil:
		return nil, s.fail(ctx, "check schema: list scopes of "+cfg.Bucket, err)
	}
	i := slices.IndexFunc(scopes, func(sc gocb.ScopeSpec) bool { return sc.Name == cfg.Scope })
	if i < 0 {
		return []string{fmt.Sprintf("scope %s is missing from bucket %s", cfg.Scope, cfg.Bucket)}, nil
	}
	if !slices.ContainsFunc(scopes[i].Collections, func(c gocb.CollectionSpec) bool { return c.Name == cfg.Collection }) {
		// Not reading on: the SDK may still reach a dropped collection by
		// its cached id (gocaves serves its old data).
		return []string{fmt.Sprintf("collection %s.%s is missing from bucket %s", cfg.Scope, cfg.Collection, cfg.Bucket)}, nil
	}
	return s.checkMeta(ctx)
}

// checkMeta reads the meta document as raw JSON, so that one that does not
// decode is a problem to report rather than a failure to check.
func (s *Store) checkMeta(ctx context.Context) ([]string, error) {
	where := fmt.Sprintf("meta document %s in %s.%s", metaKey, s.cfg.Scope, s.cfg.Collection)
	res, err := s.coll.Get(metaKey, &gocb.GetOptions{Timeout: s.cfg.OpTimeout, Context: ctx})
	switch {
	case errors.Is(err, gocb.ErrDocumentNotFound):
		return []string{where + " is missing (the store was never opened, or it was deleted)"}, nil
	case err != nil:
		return nil, s.fail(ctx, "check schema: read "+metaKey, err)
	}
	var raw json.RawMessage
	if err := res.Content(&raw); err != nil {
		return []string{fmt.Sprintf("%s is not JSON: %v", where, err)}, nil
	}
	var m struct {
		Layout *int    `json:"layout"`
		Gen    *uint64 `json:"gen"`
		Clean  *uint64 `json:"clean"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return []string{fmt.Sprintf("%s is unreadable: %v", where, err)}, nil
	}
	var problems []string
	switch {
	case m.Layout == nil:
		problems = append(problems, where+" has no layout")
	case *m.Layout != layoutVersion:
		problems = append(problems, strings.TrimPrefix(s.layoutError(*m.Layout).Error(), stores.ErrInvalidConfig.Error()+": "))
	}
	// Reset purges only generations below the current one.
	if m.Gen != nil && m.Clean != nil && *m.Clean > *m.Gen {
		problems = append(problems, fmt.Sprintf("%s is inconsistent: generations below %d purged, but the current one is %d", where, *m.Clean, *m.Gen))
	}
	return problems, nil
}

package sqlitestore

import (
	"context"
	"fmt"

	"github.com/auditflow/auditflow/stores"
)

var _ stores.IssueCounter = (*Store)(nil)

// issueWhere selects the issue rows q asks for (its limit aside).
func issueWhere(q stores.IssueQuery) where {
	var w where
	w.add("pipeline = ?", q.Pipeline, q.Pipeline != "")
	w.add("change_id = ?", q.ChangeID, q.ChangeID != "")
	w.add("status = ?", string(q.Status), q.Status != "")
	w.add("seq < ?", q.BeforeSeq, q.BeforeSeq != 0)
	return w
}

// CountIssues counts the issue rows matching q without reading them: a
// status is counted on its (status, seq) index.
func (s *Store) CountIssues(ctx context.Context, q stores.IssueQuery) (int, error) {
	q, err := q.Normalize()
	if err != nil {
		return 0, err
	}
	w := issueWhere(q)
	var n int
	if err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+quote(s.cfg.IssuesTable)+w.String(), w.args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("sqlitestore: count issues: %w", stores.ContextError(ctx, err))
	}
	return n, nil
}

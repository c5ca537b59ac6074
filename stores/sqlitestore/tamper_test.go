package sqlitestore

import (
	"context"
	"fmt"
)

// TamperRow implements storetest.Tamperer: it overwrites one column of the
// changeLog row at seq, as anyone who can write the file could.
func (s *Store) TamperRow(ctx context.Context, seq uint64, field, value string) error {
	col, ok := map[string]string{"state": "state", "pipeline": "pipeline", "changeId": "change_id", "occurredAt": "occurred_at"}[field]
	if !ok {
		return fmt.Errorf("no column for field %q", field)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE `+quote(s.cfg.ChangeLogTable)+` SET `+col+` = ? WHERE seq = ?`, value, seq)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("%d rows at sequence %d", n, seq)
	}
	return nil
}

package couchbasestore

import (
	"context"
	"encoding/json"
	"fmt"
)

// TamperRow implements storetest.Tamperer: it overwrites one field of the
// event document at seq, as anyone who may write the collection could.
//
// The document is the row: History returns its values and checks each
// against the query, so it is the copy a listing's filter finally reads.
// The leaf entries only narrow the search (see entry): altering one of
// them instead can keep a row out of a listing, never list it under a
// value it does not hold (TestForgedEntriesListNothing), and leaves
// History's answer, read from the document, unchanged.
func (s *Store) TamperRow(ctx context.Context, seq uint64, field, value string) error {
	switch field {
	case "state", "pipeline", "changeId", "occurredAt": // the document's JSON names
	default:
		return fmt.Errorf("no field for %q", field)
	}
	ks, err := s.begin(ctx)
	if err != nil {
		return err
	}
	v, err := json.Marshal(value)
	if err != nil {
		return err
	}
	key := ks.event(seq)
	return update(ctx, s, key, nil, func(d *map[string]json.RawMessage, exists bool) bool {
		if !exists {
			return false
		}
		(*d)[field] = v
		return true
	})
}

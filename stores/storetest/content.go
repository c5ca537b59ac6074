package storetest

import (
	"context"
	"reflect"
	"testing"

	"github.com/auditflow/auditflow/stores"
)

// AllContent reads every changeLog row and issue of s, newest first, a
// page at a time.
func AllContent(t testing.TB, s stores.Store) ([]stores.Record, []stores.Issue) {
	t.Helper()
	ctx := context.Background()
	var recs []stores.Record
	for q := (stores.HistoryQuery{Limit: stores.MaxLimit}); ; {
		page, err := s.History(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		recs = append(recs, page...)
		q.BeforeSeq = page[len(page)-1].Seq
	}
	var is []stores.Issue
	for q := (stores.IssueQuery{Limit: stores.MaxLimit}); ; {
		page, err := s.Issues(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		is = append(is, page...)
		q.BeforeSeq = page[len(page)-1].Seq
	}
	return recs, is
}

// SameContent fails unless a and b hold the same rows and issues, field
// for field.
func SameContent(t testing.TB, a, b stores.Store) {
	t.Helper()
	ra, ia := AllContent(t, a)
	rb, ib := AllContent(t, b)
	if len(ra) != len(rb) || len(ia) != len(ib) {
		t.Fatalf("row counts differ: changeLog %d vs %d, issues %d vs %d", len(ra), len(rb), len(ia), len(ib))
	}
	for i := range ra {
		if x, y := normRecord(ra[i]), normRecord(rb[i]); !reflect.DeepEqual(x, y) {
			t.Fatalf("changeLog row %d differs:\n%+v\n%+v", i, x, y)
		}
	}
	for i := range ia {
		if x, y := normIssue(ia[i]), normIssue(ib[i]); !reflect.DeepEqual(x, y) {
			t.Fatalf("issue %d differs:\n%+v\n%+v", i, x, y)
		}
	}
}

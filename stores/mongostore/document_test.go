package mongostore

import (
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

func TestIssueIDIsUnambiguous(t *testing.T) {
	pairs := [][2]string{
		{"a/b", "c"}, {"a", "b/c"}, {"a%2Fb", "c"}, {"a%", "2Fb/c"}, {"a%25", "c"}, {"a%", "c"}, {"a", "c"},
	}
	seen := map[text][2]string{}
	for _, p := range pairs {
		id := issueID(p[0], p[1])
		if q, dup := seen[id]; dup {
			t.Fatalf("%q and %q share the issue id %q", p, q, id)
		}
		seen[id] = p
	}
	if got := issueID("payments", "0007-add-ledger"); got != "payments/0007-add-ledger" {
		t.Errorf("plain id = %q", got)
	}
}

func TestTimeRoundTrip(t *testing.T) {
	for _, tm := range []time.Time{
		time.Date(2026, 11, 26, 9, 0, 0, 123456789, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC), // before the epoch: floor, not truncation
		time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
	} {
		at, nanos := splitTime(tm)
		if nanos < 0 || nanos >= 1e6 {
			t.Fatalf("%s: nanos %d out of range", tm, nanos)
		}
		if got := joinTime(at, nanos); !got.Equal(tm) {
			t.Errorf("%s came back as %s", tm, got)
		}
	}
}

func TestTextRoundTrip(t *testing.T) {
	for _, s := range []string{"", "plain", "ü ✓ 🚀", "nul\x00inside", "bad utf-8 \xc3\x28", "\x00"} {
		raw, err := bson.Marshal(struct {
			V text `bson:"v"`
		}{text(s)})
		if err != nil {
			t.Fatal(err)
		}
		wantType := bson.TypeString
		if !text(s).plain() {
			wantType = bson.TypeBinary
		}
		if typ := bson.Raw(raw).Lookup("v").Type; typ != wantType {
			t.Errorf("%q stored as %s, want %s", s, typ, wantType)
		}
		var got struct {
			V text `bson:"v"`
		}
		if err := bson.Unmarshal(raw, &got); err != nil || string(got.V) != s {
			t.Errorf("%q came back as %q, %v", s, got.V, err)
		}
	}
}

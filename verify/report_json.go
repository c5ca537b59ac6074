package verify

import (
	"encoding/json"
	"slices"
)

// MarshalJSON writes the report in camelCase with every list present
// ([] when empty, never null), the elapsed time in milliseconds
// (elapsedMs), and the verdicts drift, tampered and problems, so that a
// script need not recompute them.
func (r Report) MarshalJSON() ([]byte, error) {
	type plain Report // without this method
	p := plain(r)
	orEmpty(&p.Missing)
	orEmpty(&p.Extra)
	orEmpty(&p.Mismatched)
	p.Mismatched = slices.Clone(p.Mismatched)
	for i := range p.Mismatched {
		orEmpty(&p.Mismatched[i].Fields)
	}
	orEmpty(&p.Issues)
	orEmpty(&p.Drifted)
	orEmpty(&p.StreamChain)
	orEmpty(&p.StoreChain)
	orEmpty(&p.StaleTokens)
	orEmpty(&p.Unreadable)
	orEmpty(&p.WrongSubject)
	orEmpty(&p.Downgrades)
	orEmpty(&p.OutOfChain)
	orEmpty(&p.Untrusted)
	orEmpty(&p.StoreUntrusted)
	return json.Marshal(struct {
		plain
		ElapsedMs int64 `json:"elapsedMs"`
		Drift     bool  `json:"drift"`
		Tampered  bool  `json:"tampered"`
		Problems  bool  `json:"problems"`
	}{p, r.Elapsed.Milliseconds(), r.Drift(), r.Tampered(), r.Problems()})
}

func orEmpty[T any](s *[]T) {
	if *s == nil {
		*s = []T{}
	}
}

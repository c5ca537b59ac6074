//go:build stress

package lock_test

import "flag"

// With the stress tag, TestTakeoverWaitsOutTheRemovedLease makes
// -lock.takeovers removals (default 200, about 4 minutes):
//
//	go test -tags stress -run TestTakeoverWaitsOutTheRemovedLease -timeout 30m ./lock
func init() {
	flag.IntVar(&takeoverRounds, "lock.takeovers", 200, "removals TestTakeoverWaitsOutTheRemovedLease makes")
}

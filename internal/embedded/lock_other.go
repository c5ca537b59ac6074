//go:build !unix

package embedded

import "os"

// tryLock does nothing where flock is missing: one process at a time is
// then the user's to ensure.
func tryLock(*os.File) error { return nil }

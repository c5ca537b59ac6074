package projectorcmd_test

import (
	"os"
	"testing"
)

// TestMain runs the package's tests without a trust list on purpose
// (--insecure-no-trust, by its variable), unless they give one;
// TestTrustListRequired clears it.
func TestMain(m *testing.M) {
	os.Setenv("AUDITFLOW_INSECURE_NO_TRUST", "true")
	os.Exit(m.Run())
}

package cli_test

import (
	"os"
	"testing"
)

// TestMain runs the package's tests without a trust list on purpose
// (--insecure-no-trust, by its variable), as most judge other things than
// signatures; those that do give --trust, which wins, and
// TestTrustListRequired clears the variable.
func TestMain(m *testing.M) {
	os.Setenv("AUDITFLOW_INSECURE_NO_TRUST", "true")
	os.Exit(m.Run())
}

package runnercmd_test

import (
	"os"
	"testing"

	"github.com/auditflow/auditflow/runner/supervisor"
)

// TestMain installs the supervisor hook as cmd/runner's main does, so the
// end-to-end tests run change commands the way the real binary does. The
// tests run without a trust list on purpose (--insecure-no-trust, by its
// variable) unless they give one; TestTrustListRequired clears it.
func TestMain(m *testing.M) {
	supervisor.Main()
	os.Setenv("AUDITFLOW_INSECURE_NO_TRUST", "true")
	os.Exit(m.Run())
}

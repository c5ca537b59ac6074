package runnercmd_test

import (
	"os"
	"testing"

	"github.com/auditflow/auditflow/runner/supervisor"
)

// TestMain installs the supervisor hook as cmd/runner's main does, so the
// end-to-end tests run change commands the way the real binary does.
func TestMain(m *testing.M) {
	supervisor.Main()
	os.Exit(m.Run())
}

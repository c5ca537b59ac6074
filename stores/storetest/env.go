package storetest

import (
	"os"
	"testing"
)

// RequireIntegrationEnv is the environment variable that turns a missing
// test server from a skip into a failure. CI sets it, so a backend whose
// server did not start can never pass by being skipped.
const RequireIntegrationEnv = "AUDITFLOW_REQUIRE_INTEGRATION"

// ServerAddr returns the value of the environment variable that points the
// tests at a real server (scripts/testservers.sh writes them). If it is not
// set the test is skipped, or fails when AUDITFLOW_REQUIRE_INTEGRATION=1.
func ServerAddr(t testing.TB, envVar string) string {
	t.Helper()
	v := os.Getenv(envVar)
	if v != "" {
		return v
	}
	msg := envVar + " is not set: start the test servers with scripts/testservers.sh start and source its env file"
	if os.Getenv(RequireIntegrationEnv) == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

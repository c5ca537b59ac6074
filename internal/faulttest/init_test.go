//go:build unix

package faulttest

import (
	"os/exec"
	"testing"
)

// initAuditflow runs auditflow init against url, as a deployment does
// before its first runner: runners and projectors never create the audit
// stream, the lock bucket or the projector's streams. The bucket's lease
// is the test lease.
func initAuditflow(t *testing.T, url string) {
	t.Helper()
	out, err := exec.Command(bin.auditflow, "init", "--nats-url", url, "--lock-lease", lease.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("auditflow init: %v\n%s", err, out)
	}
}

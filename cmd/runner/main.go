// Command runner applies a pipeline's change files under the pipeline lock
// and records every execution on the audit stream. See docs/change-files.md, or run
// it with -h.
package main

import (
	"context"
	"os"

	"github.com/auditflow/auditflow/internal/runnercmd"
	"github.com/auditflow/auditflow/runner/supervisor"
)

func main() {
	// First: this binary re-executes itself as the supervisor of each
	// change command, and in that role must do nothing else.
	supervisor.Main()
	// SIGINT/SIGTERM cancel the run with the signal as the cause, so the
	// record says "interrupted (SIGTERM)" and the exit code is 130/143.
	ctx, stop := runnercmd.SignalContext(context.Background())
	code := runnercmd.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

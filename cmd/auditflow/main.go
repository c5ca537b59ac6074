// Command auditflow is the operator's tool: audit history, issues and their
// fixes, locks, stats, and the stream-as-source-of-truth operations
// (replay, verify, repair, test-connection, verify-schema). Run it with -h.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/auditflow/auditflow/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

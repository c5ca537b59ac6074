// Command projector consumes the audit stream into an audit store until it
// receives SIGINT or SIGTERM, then finishes its batch in flight, acknowledges
// it and exits 0. See docs/deployment.md, or run it with -h.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/auditflow/auditflow/internal/projectorcmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := projectorcmd.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

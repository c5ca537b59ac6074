//go:build unix

package changefile_test

import (
	"context"
	"testing"

	"github.com/auditflow/auditflow/runner/changefile"
)

// BenchmarkCommand is what the supervisor costs a change: applying a
// change whose command is `true`, run directly as this process's child
// and under a supervisor process (the test binary re-executed, as the
// runner re-executes itself).
//
//	go test ./runner/changefile -run XXX -bench Command
func BenchmarkCommand(b *testing.B) {
	for _, mode := range []string{"direct", "supervised"} {
		b.Run(mode, func(b *testing.B) {
			if mode == "direct" {
				changefile.RunDirectly(b)
			}
			c, _ := load(b, "id: bench\napply: 'true'\n", changefile.Options{})
			for b.Loop() {
				if err := c.Apply(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

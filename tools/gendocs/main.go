// Command gendocs regenerates the command-line reference in docs/cli from
// the commands themselves. Run it from the repository's root after changing
// a command or a flag:
//
//	go run ./tools/gendocs
//
// (or go generate ./docs). The docs' test fails while docs/cli is stale.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/auditflow/auditflow/internal/clidoc"
)

func main() {
	dir := filepath.Join("docs", "cli")
	if len(os.Args) > 1 {
		dir = os.Args[1]
	}
	// Flag defaults read AUDITFLOW_* (and AWS_REGION): the reference shows
	// the built-in ones.
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "AUDITFLOW_") || strings.HasPrefix(name, "AWS_") {
			_ = os.Unsetenv(name)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
	if err := clidoc.Generate(dir); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}

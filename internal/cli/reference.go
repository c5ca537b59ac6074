package cli

import (
	"io"

	"github.com/spf13/cobra"
)

// NewRootCommand returns the auditflow command tree as Main runs it, for
// tools that read it rather than run it: the CLI reference in docs/cli is
// generated from it (tools/gendocs), and the docs' tests look up the
// commands and flags the examples use.
func NewRootCommand(stdout, stderr io.Writer) *cobra.Command {
	root := (&app{out: stdout, errOut: stderr}).rootCommand()
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root
}

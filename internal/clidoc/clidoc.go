// Package clidoc writes the command-line reference in docs/cli: a page per
// auditflow command, generated from its cobra command tree, and a page each
// for runner and projector, whose standard-library flag sets print their
// reference with -h. tools/gendocs runs it; the docs' test runs it into a
// temporary directory and fails when docs/cli differs.
//
// Flag defaults may come from AUDITFLOW_* variables: generate in an
// environment without them (tools/gendocs unsets them) or the pages show
// the local settings.
package clidoc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/projectorcmd"
	"github.com/auditflow/auditflow/internal/runnercmd"
	"github.com/spf13/cobra/doc"
)

// Command is the command that regenerates docs/cli, run from the
// repository's root.
const Command = "go run ./tools/gendocs"

// Generate writes the reference into dir, which must exist.
func Generate(dir string) error {
	root := cli.NewRootCommand(io.Discard, io.Discard)
	root.DisableAutoGenTag = true
	if err := doc.GenMarkdownTree(root, dir); err != nil {
		return fmt.Errorf("clidoc: auditflow: %w", err)
	}
	for _, c := range []struct {
		name, what string
		main       func(context.Context, []string, io.Writer, io.Writer) int
	}{
		{"runner", "applies a pipeline's change files and records every execution on the audit stream", runnercmd.Main},
		{"projector", "consumes the audit stream into an audit store", projectorcmd.Main},
	} {
		var out, errOut bytes.Buffer
		if code := c.main(context.Background(), []string{"-h"}, &out, &errOut); code != 0 {
			return fmt.Errorf("clidoc: %s -h: exit %d: %s", c.name, code, errOut.String())
		}
		page := fmt.Sprintf("## %s\n\n`%s` %s. Its flags are Go flags: `-name` and `--name` are the same.\n\n```\n%s```\n", c.name, c.name, c.what, out.String())
		if err := os.WriteFile(filepath.Join(dir, c.name+".md"), []byte(page), 0o644); err != nil {
			return fmt.Errorf("clidoc: %w", err)
		}
	}
	return nil
}

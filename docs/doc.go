// Package docs holds auditflow's user documentation (the Markdown pages in
// this directory and the generated command-line reference in docs/cli) and
// the tests that keep it true: links and anchors resolve, the shell
// examples run (or at least name commands and flags that exist), docs/cli
// matches the commands, and the audit bundle's JSON Schemas (docs/schemas)
// match what export writes. See README.md here for the conventions.
package docs

//go:generate go run ../tools/gendocs cli

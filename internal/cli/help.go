package cli

import (
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

type pflagFlag = pflag.Flag

// storeFlagKind returns the store a flag belongs to ("" for other flags).
func storeFlagKind(name string) string {
	for prefix, kind := range map[string]string{"sqlite-": "sqlite", "mongo-": "mongo", "dynamo-": "dynamodb", "couchbase-": "couchbase"} {
		if strings.HasPrefix(name, prefix) {
			return kind
		}
	}
	return ""
}

// examples are the commands' help examples, for commands defined in files
// that do not set their own.
var examples = map[string]string{
	"auditflow": `  auditflow audit list                         # after runner --embedded: reads .auditflow/
  auditflow --nats-url nats://nats:4222 --store mongo issue list --json
  auditflow --context prod stats --since 24h`,
	"auditflow audit":                 "  auditflow audit list -p billing --since 24h",
	"auditflow issue":                 "  auditflow issue list --fail-on-open",
	"auditflow lock":                  "  auditflow lock list",
	"auditflow keys":                  "  auditflow keys new --out alice.nk --name alice --role operator",
	"auditflow init":                  "  auditflow init --stream-replicas 3 --mirror AUDIT_MIRROR",
	"auditflow restore":               "  auditflow restore --from AUDIT_MIRROR",
	"auditflow replay":                "  auditflow --store mongo replay --reset",
	"auditflow verify":                "  auditflow --store sqlite --sqlite-path /var/lib/auditflow/audit.db verify --json",
	"auditflow repair":                "  auditflow --store dynamodb repair --dry-run",
	"auditflow keys new":              "  auditflow keys new --out runner-billing.nk --name runner-billing --role runner --pipeline billing",
	"auditflow keys public":           "  auditflow keys public --key runner-billing.nk",
	"auditflow lock release":          "  auditflow lock release -p billing --force --revision 42",
	"auditflow lock list":             "  auditflow lock list --json",
	"auditflow console key":           "  auditflow console key new --name alice",
	"auditflow completion":            "  auditflow completion bash > /etc/bash_completion.d/auditflow",
	"auditflow completion bash":       "  auditflow completion bash > /etc/bash_completion.d/auditflow",
	"auditflow completion zsh":        "  auditflow completion zsh > \"${fpath[1]}/_auditflow\"",
	"auditflow completion fish":       "  auditflow completion fish > ~/.config/fish/completions/auditflow.fish",
	"auditflow completion powershell": "  auditflow completion powershell | Out-String | Invoke-Expression",
}

// finishHelp gives every command an example, and makes help show the
// flags of the selected store only (--store, default sqlite): the four
// stores have 45 flags between them, which drowned every command's own.
func finishHelp(root *cobra.Command, a *app) {
	root.InitDefaultCompletionCmd() // now, not at Execute: it gets examples too
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Example == "" {
			c.Example = examples[c.CommandPath()]
		}
		if c != root && !c.Runnable() && c.HasSubCommands() {
			// A group: cobra would print its help and exit 0 for
			// "auditflow audit bogus"; an unknown subcommand is bad usage.
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(c *cobra.Command, args []string) error {
				if len(args) > 0 {
					return usage("unknown command %q for %q (see %s --help)", args[0], c.CommandPath(), c.CommandPath())
				}
				return c.Help()
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	root.Long += `

Store flags: help shows those of the selected --store only; for another
store's, ask with it: auditflow --store mongo --help.`
	defaultHelp := root.HelpFunc()
	root.SetHelpFunc(func(c *cobra.Command, args []string) {
		root.PersistentFlags().VisitAll(func(f *pflag.Flag) {
			if k := storeFlagKind(f.Name); k != "" {
				f.Hidden = k != a.store.Kind
			}
		})
		defaultHelp(c, args)
	})
}

package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/trust"
)

func (a *app) keysCommand() *cobra.Command {
	keys := &cobra.Command{Use: "keys", Short: "Signing keys for signed events: create one, show a key file's public key"}
	var out, name string
	var roles, pipelines []string
	create := &cobra.Command{
		Use:   "new",
		Short: "Create a signing key (an nkey user seed, mode 0600) and print its trust-list entry",
		Long: `new writes a new ed25519 signing key — an nkey user seed, readable by its owner
only — to --out, never over an existing file, and prints its public key and an
entry to paste under keys: in the trust list that projectors, runners, verify
and issue fix are given (--trust). Give each runner fleet and each operator a
key of its own: the list says what each may sign (runner: every event but
ManuallyResolved; operator: ManuallyResolved) and for which pipelines.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usage("--out is required: the file to write the key to")
			}
			k := trust.Key{Name: name, Pipelines: pipelines}
			for _, r := range roles {
				k.Roles = append(k.Roles, trust.Role(r))
			}
			s, err := trust.NewKeyFile(out)
			if err != nil {
				return err
			}
			k.Key = s.PublicKey()
			if _, err := trust.NewList(k); err != nil {
				return usage("the key was written to %s, but its entry does not validate: %v", out, err)
			}
			return a.emit(map[string]any{"file": out, "publicKey": k.Key, "entry": k}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "key\t%s (keep it secret: it signs as %s)\n", out, k.Name)
				fmt.Fprintf(w, "public key\t%s\n", k.Key)
				_ = w.Flush()
				fmt.Fprintf(w, "\ntrust-list entry (under keys:):\n%s", indent(k.YAML()))
			})
		},
	}
	create.Flags().StringVar(&out, "out", "", "the file to write the key to (required; never overwritten)")
	create.Flags().StringVar(&name, "name", "operator", "the key's name in the trust list: the operator or runner fleet it belongs to")
	create.Flags().StringSliceVar(&roles, "role", []string{string(trust.RoleOperator)}, "runner or operator (repeatable)")
	create.Flags().StringSliceVar(&pipelines, "pipeline", []string{trust.AllPipelines}, "pipelines the key is trusted for (repeatable; * for all)")

	var file string
	public := &cobra.Command{
		Use:   "public",
		Short: "Print the public key of a signing key file (an nkey seed or a NATS .creds file)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usage("--key is required")
			}
			s, err := trust.LoadSigner(file)
			if err != nil {
				return usageError{err}
			}
			return a.emit(map[string]string{"publicKey": s.PublicKey()}, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, s.PublicKey())
			})
		},
	}
	public.Flags().StringVar(&file, "key", "", "the key file (required)")
	keys.AddCommand(create, public)
	return keys
}

// indent indents a YAML list entry by two spaces, to sit under keys:.
func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ") + "\n"
}

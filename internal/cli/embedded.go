package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/trust"
)

// setUpEmbedded decides whether the command reads runner --embedded's data
// directory, and if so points the store and the trust settings at it.
//
// The quickstart (runner --embedded) keeps its stream in DATA/nats and its
// store in DATA/audit.db, served to this machine's user only (a loopback
// port behind a token, see embedded.Config.Share). So that the commands
// that follow it in the README work with no flags, auditflow reads that
// directory directly — the NATS server in-process, the SQLite file — when
// asked with --embedded, or when nothing says otherwise: DATA/nats exists
// and no NATS setting (--nats-url, --nats-url-file, --nats-creds,
// --nats-nkey, --context or their AUDITFLOW_* variables) and no store
// setting (--store or any store flag, or its variable) is given. It says
// so on stderr, so an operator never mistakes local data for a
// deployment's.
func (a *app) setUpEmbedded(cmd *cobra.Command) error {
	natsDir := filepath.Join(a.dataDir, "nats")
	if !a.embedded {
		if explicitNATSOrStore(cmd) {
			return nil
		}
		if fi, err := os.Stat(natsDir); err != nil || !fi.IsDir() {
			return nil
		}
		a.embedded, a.detected = true, true
	}
	flags := cmd.Flags()
	if flags.Changed("store") && a.store.Kind != "sqlite" {
		return usage("--embedded reads the SQLite store of runner --embedded (%s); it cannot be used with --store %s", filepath.Join(a.dataDir, "audit.db"), a.store.Kind)
	}
	if a.readOnly {
		if _, err := os.Stat(natsDir); errors.Is(err, os.ErrNotExist) {
			return usage("--embedded: no embedded data in %s (run `runner --embedded --data-dir %s --changes DIR` first, or give --data-dir)", a.dataDir, a.dataDir)
		}
	}
	a.store.Kind = "sqlite"
	if !flags.Changed("sqlite-path") {
		a.store.SQLite.Path = filepath.Join(a.dataDir, "audit.db")
	}
	// The embedded mode's local key and the trust list that believes it
	// (trust.LocalKey): judge and sign as the runner does.
	if a.signing.flags.Trust == "" {
		if p := filepath.Join(a.dataDir, trust.LocalTrustFile); exists(p) {
			a.signing.flags.Trust = p
		}
	}
	if a.signing.flags.SigningKey == "" && cmd.Name() == "fix" {
		if p := filepath.Join(a.dataDir, trust.LocalKeyFile); exists(p) {
			a.signing.flags.SigningKey, a.localKey = p, true
		}
	}
	return nil
}

// note says once, on stderr, that the embedded data is being read.
func (a *app) note() {
	if a.embedded && a.detected && !a.noted {
		a.noted = true
		fmt.Fprintf(a.errOut, "auditflow: reading the embedded data in %s (runner --embedded); give --nats-url or --store to use a deployment\n", a.dataDir)
	}
}

// explicitNATSOrStore reports whether a NATS server or a store was
// configured by a flag or an environment variable.
func explicitNATSOrStore(cmd *cobra.Command) bool {
	for _, env := range []string{"AUDITFLOW_NATS_URL", "AUDITFLOW_NATS_URL_FILE", "AUDITFLOW_NATS_CREDS", "AUDITFLOW_NATS_NKEY",
		"AUDITFLOW_NATS_CONTEXT", "AUDITFLOW_STORE", "AUDITFLOW_SQLITE_PATH"} {
		if os.Getenv(env) != "" {
			return true
		}
	}
	explicit := false
	cmd.Flags().Visit(func(f *pflagFlag) {
		if f.Name == "context" || f.Name == "store" || strings.HasPrefix(f.Name, "nats-") || storeFlagKind(f.Name) != "" {
			explicit = true
		}
	})
	return explicit
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

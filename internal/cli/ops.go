package cli

import (
	"errors"
	"fmt"
	"text/tabwriter"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/internal/natsconn"
	"github.com/auditflow/auditflow/lock"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/stores"
)

// check is one line of test-connection or verify-schema.
type check struct {
	What   string `json:"what"`
	OK     bool   `json:"ok"`
	Warn   bool   `json:"warning,omitempty"` // not a failure, but worth knowing
	Detail string `json:"detail"`
}

func (a *app) report(checks []check) error {
	failed := 0
	for _, c := range checks {
		if !c.OK && !c.Warn {
			failed++
		}
	}
	err := a.emit(checks, func(w *tabwriter.Writer) {
		for _, c := range checks {
			mark := "ok"
			switch {
			case c.Warn:
				mark = "warn"
			case !c.OK:
				mark = "FAIL"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\n", mark, c.What, c.Detail)
		}
	})
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%w: %d check(s) failed", errProblems, failed)
	}
	return nil
}

func (a *app) testConnectionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "test-connection",
		Short: "Check that the audit log (NATS JetStream) and the audit store are reachable and usable, creating nothing",
		Long: `test-connection connects to NATS, checks JetStream and the audit stream, opens
the store read-only (it creates no file, table, collection or index: a store
that is missing is a failed check) and reads it. For SQLite it also proves
that the store may be written: it takes the database's write lock and rolls
back, leaving nothing behind.`,
		Example: "  auditflow --nats-url nats://nats:4222 --store sqlite --sqlite-path /data/audit.db test-connection",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var checks []check
			js, err := a.connect()
			if err != nil {
				checks = append(checks, check{What: "nats", Detail: err.Error()})
			} else {
				checks = append(checks, check{What: "nats", OK: true, Detail: fmt.Sprintf("connected to %s (server %s, version %s)",
					natsconn.Redact(a.nc.ConnectedUrl()), a.nc.ConnectedServerName(), a.nc.ConnectedServerVersion())})
				checks = append(checks, streamChecks(cmd, js, a)...)
			}
			st, err := a.openStore(ctx)
			if err != nil {
				checks = append(checks, check{What: "store", Detail: err.Error()})
				return a.report(checks)
			}
			checks = append(checks, check{What: "store", OK: true, Detail: "opened " + a.store.Describe() + " read-only"})
			if cp, err := st.Checkpoint(ctx, a.consumerName()); err != nil {
				checks = append(checks, check{What: "store read", Detail: err.Error() + " (check that the credentials may read the audit tables/collections; the projector creates them)"})
			} else {
				checks = append(checks, check{What: "store read", OK: true, Detail: fmt.Sprintf("checkpoint of %s: %d", a.consumerName(), cp)})
			}
			switch ok, err := a.store.ProbeWrite(ctx, st); {
			case err != nil:
				checks = append(checks, check{What: "store write", Detail: err.Error() + " (the projector's credentials must write the store)"})
			case ok && a.store.Kind == "sqlite":
				checks = append(checks, check{What: "store write", OK: true, Detail: "took the write lock and rolled back: writable"})
			case ok:
				checks = append(checks, check{What: "store write", OK: true, Detail: "wrote a probe row and removed it: writable"})
			default:
				checks = append(checks, check{What: "store write", Warn: true, Detail: "not probed: " + a.store.Kind + " has no write check that leaves nothing behind"})
			}
			return a.report(checks)
		},
	}
}

// streamChecks checks JetStream and the audit stream without changing them.
func streamChecks(cmd *cobra.Command, js jetstream.JetStream, a *app) []check {
	ctx := cmd.Context()
	var checks []check
	info, err := js.AccountInfo(ctx)
	if err != nil {
		return append(checks, check{What: "jetstream", Detail: err.Error() + " (enable JetStream on the server and for this account)"})
	}
	checks = append(checks, check{What: "jetstream", OK: true, Detail: fmt.Sprintf("enabled: %d streams, %d consumers", info.Streams, info.Consumers)})
	sc := a.streamConfig()
	diffs, err := producer.CheckStream(ctx, js, sc)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		checks = append(checks, check{What: "stream " + sc.Name, Detail: "does not exist: runners and projectors refuse to start; create it with auditflow init (a new deployment) or restore it from its backup or mirror (a deleted one)"})
	case err != nil:
		checks = append(checks, check{What: "stream " + sc.Name, Detail: err.Error() + " (check the account's permissions on $JS.API.STREAM.INFO)"})
	case len(diffs) > 0:
		checks = append(checks, check{What: "stream " + sc.Name, Detail: "differs from the expected configuration: " + joinComma(diffs)})
	default:
		checks = append(checks, check{What: "stream " + sc.Name, OK: true, Detail: "exists with the expected configuration (file storage, no limits, delete/purge denied)"})
	}
	return checks
}

func (a *app) verifySchemaCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "verify-schema",
		Short:   "Check the stream, the lock bucket and the store's tables/collections and indexes, creating nothing",
		Example: "  auditflow --store mongo verify-schema --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var checks []check
			if js, err := a.connect(); err != nil {
				checks = append(checks, check{What: "nats", Detail: err.Error()})
			} else {
				checks = append(checks, streamChecks(cmd, js, a)...)
				if kv, err := js.KeyValue(ctx, lock.DefaultBucket); err != nil {
					checks = append(checks, check{What: "lock bucket", Detail: err.Error() + " (runners refuse to start without it: create it with auditflow init)"})
				} else if st, err := kv.Status(ctx); err != nil {
					checks = append(checks, check{What: "lock bucket", Detail: err.Error()})
				} else {
					checks = append(checks, check{What: "lock bucket", OK: true, Detail: fmt.Sprintf("%s, lease (TTL) %s", lock.DefaultBucket, st.TTL())})
				}
			}
			a.store.CheckOnly = true // look, do not create
			st, err := a.openStore(ctx)
			if err != nil {
				checks = append(checks, check{What: "store", Detail: err.Error()})
				return a.report(checks)
			}
			sc, ok := st.(stores.SchemaChecker)
			if !ok {
				checks = append(checks, check{What: "store schema", Warn: true, Detail: a.store.Kind + " cannot check its schema"})
				return a.report(checks)
			}
			problems, err := sc.CheckSchema(ctx)
			switch {
			case err != nil:
				checks = append(checks, check{What: "store schema", Detail: err.Error()})
			case len(problems) == 0:
				checks = append(checks, check{What: "store schema", OK: true, Detail: "tables/collections and indexes as expected in " + a.store.Describe()})
			}
			for _, p := range problems {
				checks = append(checks, check{What: "store schema", Detail: p})
			}
			return a.report(checks)
		},
	}
}

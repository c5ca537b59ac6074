package cli

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/auditflow/auditflow/internal/console"
	"github.com/auditflow/auditflow/internal/natsconn"
)

// consoleKeysFile is where the console's API keys live in an embedded data
// directory, so that the quickstart needs no flag.
const consoleKeysFile = "console-keys"

// keysFile is --keys-file, or in embedded mode the data directory's.
func (a *app) keysFile(flag string) string {
	if flag == "" && a.embedded {
		return filepath.Join(a.dataDir, consoleKeysFile)
	}
	return flag
}

func (a *app) consoleCommand() *cobra.Command {
	var listen, keysFile, tlsCert, tlsKey string
	var noAuth bool
	var staleAfter time.Duration
	cmd := &cobra.Command{
		Use:   "console",
		Short: "Serve the audit console: a read-only web page and JSON API over the audit store, live from AuditWrite events",
		Long: `console serves the audit console on --listen: pages for people (pipelines and
their changes, each change's timeline, open issues with guidance and the CLI
command that fixes them, locks, dead letters, projector lag) and the same
data as JSON under /api/v1 (described at /api/v1/openapi.json). Pages update
live from the projector's AuditWrite events.

It only reads: a deployment's store is opened read-only, and fixing stays in
the CLI.
Everyone needs an API key from --keys-file (auditflow console key new makes
one): the API takes it as "Authorization: Bearer KEY", browsers once in the
sign-in form. --insecure-no-auth lets everyone in, on a loopback address
only. The console reloads the keys file within a second of a change, and on
SIGHUP: a key made or deleted meanwhile counts at once, no restart needed.

After runner --embedded the console reads .auditflow/ like the other
commands, with its keys in .auditflow/console-keys, and keeps the embedded
store up to date with the stream itself (about every half second): a runner
--embedded or an auditflow command started while it runs joins the console's
embedded server, and what they record shows in the console at once.`,
		Example: `  auditflow console key new --name alice      # prints the key once
  auditflow console --listen 127.0.0.1:8080    # then open http://127.0.0.1:8080
  auditflow --nats-url nats://nats:4222 --store mongo console --listen :8443 --keys-file keys --tls-cert c.pem --tls-key k.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if (tlsCert == "") != (tlsKey == "") {
				return usage("--tls-cert and --tls-key go together")
			}
			cfg := console.Config{StoreKind: a.store.Kind, Consumer: a.consumerName(), Stream: a.streamConfig().Name,
				StaleAfter: staleAfter, Logger: a.log, SecureCookies: tlsCert != ""}
			switch path := a.keysFile(keysFile); {
			case noAuth:
				if !loopback(listen) {
					return usage("--insecure-no-auth: %s is not a loopback address (127.0.0.1, ::1 or localhost); give API keys (--keys-file) to listen there", listen)
				}
				if path != "" && keysFile != "" {
					return usage("--insecure-no-auth and --keys-file: choose one")
				}
				cfg.NoAuth = true
			case path == "":
				return usage("--keys-file is required (auditflow console key new --keys-file FILE --name NAME makes one), or --insecure-no-auth on a loopback address")
			default:
				keys, err := console.LoadKeys(path)
				if err != nil {
					return usageError{fmt.Errorf("%w (auditflow console key new --keys-file %s --name NAME adds a key)", err, path)}
				}
				cfg.Keys, cfg.KeysFile = keys, path
			}
			var tlsConfig *tls.Config
			if tlsCert != "" {
				c, err := tls.LoadX509KeyPair(tlsCert, tlsKey)
				if err != nil {
					return usage("--tls-cert/--tls-key: %v", err)
				}
				tlsConfig = &tls.Config{Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS12}
			}
			st, err := a.openStore(ctx)
			if err != nil {
				return err
			}
			cfg.Store = st
			if js, err := a.connect(); err != nil {
				a.log.Warn("console: no NATS: pages are not live, and lag, write latency, locks and dead letters are not shown", "err", err)
			} else {
				cfg.NC, cfg.JS = a.nc, js
				lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				if l, err := a.locker(lctx); err != nil {
					a.log.Warn("console: no lock bucket: locks are not shown", "err", err)
				} else {
					cfg.Locks = l
				}
				cancel()
			}
			srv, err := console.New(cfg)
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			scheme := "http"
			if tlsConfig != nil {
				scheme = "https"
			}
			fmt.Fprintf(a.errOut, "auditflow: console serving %s on %s://%s/ (API: /api/v1, OpenAPI: /api/v1/openapi.json)\n", a.store.Describe(), scheme, ln.Addr())
			rctx, stop := context.WithCancel(ctx)
			defer stop()
			var wg sync.WaitGroup
			defer wg.Wait()
			defer stop()
			if cfg.KeysFile != "" {
				hup := make(chan os.Signal, 1)
				signal.Notify(hup, syscall.SIGHUP)
				defer signal.Stop(hup)
				wg.Go(func() {
					for {
						select {
						case <-rctx.Done():
							return
						case <-hup:
							_ = srv.ReloadKeys()
						}
					}
				})
			}
			if a.embedded && cfg.JS != nil {
				wg.Go(func() { a.keepCaughtUp(rctx) })
			}
			return srv.Run(rctx, ln, tlsConfig)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", natsconn.Env("AUDITFLOW_CONSOLE_LISTEN", "127.0.0.1:8080"), "the address to serve on [AUDITFLOW_CONSOLE_LISTEN]")
	f.StringVar(&keysFile, "keys-file", natsconn.Env("AUDITFLOW_CONSOLE_KEYS", ""), "the API keys file (hashes and roles; auditflow console key new); default with embedded data: DATA/console-keys [AUDITFLOW_CONSOLE_KEYS]")
	f.BoolVar(&noAuth, "insecure-no-auth", false, "let everyone in with the read role, without a key: only on a loopback --listen address")
	f.StringVar(&tlsCert, "tls-cert", "", "serve HTTPS with this certificate (PEM; with --tls-key)")
	f.StringVar(&tlsKey, "tls-key", "", "the certificate's private key (PEM)")
	f.DurationVar(&staleAfter, "stale-after", 0, "show an execution started this long ago without an end as UNCERTAIN (default 15m)")
	cmd.AddCommand(a.consoleKeyCommand())
	return cmd
}

func (a *app) consoleKeyCommand() *cobra.Command {
	key := &cobra.Command{Use: "key", Short: "The console's API keys"}
	var keysFile, name, role string
	newKey := &cobra.Command{
		Use:   "new",
		Short: "Make an API key: prints it once and adds its SHA-256 hash and role to the keys file",
		Long: `new makes a random API key, prints it on stdout — the only time it is shown:
hand it to its user — and appends its name, role and SHA-256 hash to
--keys-file (created readable by its owner only). Roles: read (the whole
console) and stats (only /api/v1/stats, e.g. for monitoring). To revoke a
key, delete its line. A running console reloads the file within a second of
a change (and on SIGHUP): no restart is needed either way.`,
		Example: "  auditflow console key new --name alice\n  auditflow console key new --keys-file /etc/auditflow/console-keys --name grafana --role stats",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path := a.keysFile(keysFile)
			if path == "" {
				return usage("--keys-file is required (no embedded data directory to keep it in)")
			}
			k, line, err := console.NewKey(name, console.Role(role))
			if err != nil {
				return usageError{err}
			}
			if err := console.AppendKey(path, line); err != nil {
				return err
			}
			fmt.Fprintf(a.errOut, "auditflow: added key %q (role %s) to %s; a console running with that keys file accepts it within a second. The key is shown once:\n", name, role, path)
			return a.emit(map[string]string{"name": name, "role": role, "keysFile": path, "key": k}, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, k)
			})
		},
	}
	newKey.Flags().StringVar(&keysFile, "keys-file", natsconn.Env("AUDITFLOW_CONSOLE_KEYS", ""), "the API keys file to add to; default with embedded data: DATA/console-keys [AUDITFLOW_CONSOLE_KEYS]")
	newKey.Flags().StringVar(&name, "name", "", "who or what the key is for (required): shown in the console's log, never the key")
	newKey.Flags().StringVar(&role, "role", string(console.RoleRead), "read or stats")
	key.AddCommand(newKey)
	return key
}

// catchUpEvery is how often the console brings the embedded store up to
// date with the stream.
const catchUpEvery = 500 * time.Millisecond

// keepCaughtUp brings the embedded store up to date with the stream until
// ctx ends: in the embedded mode no projector runs beside the console, and
// what a runner or an issue fix records meanwhile must show.
func (a *app) keepCaughtUp(ctx context.Context) {
	t := time.NewTicker(catchUpEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := a.catchUp(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("console: bringing the embedded store up to date", "err", err)
		}
	}
}

// loopback reports whether addr (host:port) listens on a loopback
// interface only.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

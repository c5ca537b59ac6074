// Package natsconn holds the NATS connection settings shared by the
// auditflow commands: flags with environment-variable defaults, and a
// Connect that applies them.
//
// Secrets stay out of help, errors and logs: -h shows the URL with its
// password or token redacted, errors show URLs through redact.URI and are
// masked with the connection's secrets, and every secret has a file
// variant (--nats-url-file, --nats-creds, --nats-nkey) so that it need not
// appear in the process list. Secrets returns the values a process must
// mask in output it records.
//
// Replies come back on the connection's own inbox prefix (Inbox):
// _INBOX.<user> by default, or _INBOX.<role> for the role the command
// acts as. A server that lets each user subscribe to its own prefix only
// keeps one role's replies — the events a projector fetches, the history an
// operator's verify reads — from every other role's reach.
package natsconn

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/auditflow/auditflow/internal/redact"
)

// Config is how to reach a NATS server or cluster.
type Config struct {
	URL     string // comma-separated server URLs, perhaps with user:password@ or token@
	URLFile string // file holding URL, instead of URL (keeps a password out of ps and the environment)
	Creds   string // path to a .creds file (JWT + nkey)
	Nkey    string // path to a file holding an nkey seed (nkey authentication without a JWT)
	TLSCert string // client certificate (mutual TLS)
	TLSKey  string
	TLSCA   string // CA to verify the server with
	Name    string // connection name shown in server monitoring
	// Context names a NATS CLI context (~/.config/nats/context/NAME.json)
	// that fills in what the settings above leave unset.
	Context string
	// InboxPrefix is the subject prefix of the connection's reply inboxes
	// (--nats-inbox-prefix); empty: Inbox's default rule.
	InboxPrefix string
	// Role is what the command connects as (RoleAdmin, RoleOperator,
	// RoleConsole, RoleProjector, RoleSIEM, RunnerRole): the inbox
	// prefix's default when no user name is known. Set by the command,
	// not by a flag.
	Role string

	contextLoaded         bool
	user, password, token string // from the context
}

// Env returns the value of an environment variable, or def.
func Env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// RegisterFlags adds --nats-url, --nats-url-file, --nats-creds,
// --nats-nkey, --nats-tls-{cert,key,ca}, --context and
// --nats-inbox-prefix, each defaulting to its
// AUDITFLOW_NATS_* environment variable. The default shown for --nats-url
// has its password or token redacted.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	redact.StringVar(fs, &c.URL, "nats-url", Env("AUDITFLOW_NATS_URL", nats.DefaultURL),
		"NATS server `URLs`, comma-separated; a password or token in them shows in ps: prefer the variable or --nats-url-file [AUDITFLOW_NATS_URL]")
	fs.StringVar(&c.URLFile, "nats-url-file", Env("AUDITFLOW_NATS_URL_FILE", ""), "file holding the NATS server URLs, instead of --nats-url [AUDITFLOW_NATS_URL_FILE]")
	fs.StringVar(&c.Creds, "nats-creds", Env("AUDITFLOW_NATS_CREDS", ""), "NATS credentials file: user JWT and nkey seed [AUDITFLOW_NATS_CREDS]")
	fs.StringVar(&c.Nkey, "nats-nkey", Env("AUDITFLOW_NATS_NKEY", ""), "file holding an nkey user seed (SU…), for nkey authentication without a JWT; not with --nats-creds [AUDITFLOW_NATS_NKEY]")
	fs.StringVar(&c.TLSCert, "nats-tls-cert", Env("AUDITFLOW_NATS_TLS_CERT", ""), "client certificate for mutual TLS [AUDITFLOW_NATS_TLS_CERT]")
	fs.StringVar(&c.TLSKey, "nats-tls-key", Env("AUDITFLOW_NATS_TLS_KEY", ""), "client key for mutual TLS [AUDITFLOW_NATS_TLS_KEY]")
	fs.StringVar(&c.TLSCA, "nats-tls-ca", Env("AUDITFLOW_NATS_TLS_CA", ""), "CA certificate to verify the server [AUDITFLOW_NATS_TLS_CA]")
	fs.StringVar(&c.InboxPrefix, "nats-inbox-prefix", Env("AUDITFLOW_NATS_INBOX_PREFIX", ""), "subject `prefix` of this process's reply inboxes; the server must let this user subscribe to PREFIX.> (default _INBOX.<user> with a user in the URL or context, else _INBOX.<role>: docs/security.md, Inboxes) [AUDITFLOW_NATS_INBOX_PREFIX]")
	fs.StringVar(&c.Context, "context", Env("AUDITFLOW_NATS_CONTEXT", ""), "NATS CLI context `NAME` (~/.config/nats/context/NAME.json, as nats context save writes it): its server, credentials and TLS files, where the --nats-* flags give none [AUDITFLOW_NATS_CONTEXT]")
}

// Validate checks that the settings fit together and that the files they
// name can be read; an nkey seed must be a user seed. Its errors wrap
// ErrInvalidConfig and show no secret: URLs are redacted, files are named,
// never quoted.
func (c Config) Validate() error {
	if err := c.applyContext(); err != nil {
		return err
	}
	urls, _, err := c.load()
	if err != nil {
		return err
	}
	_, _, err = c.inboxPrefix(urls)
	return err
}

// load reads the URL file, checks the settings, and returns the URLs and
// the nkey option.
func (c Config) load() (string, nats.Option, error) {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	urls := c.URL
	if c.URLFile != "" {
		if urls != "" && urls != nats.DefaultURL {
			return "", nil, invalid("--nats-url and --nats-url-file (or AUDITFLOW_NATS_URL and AUDITFLOW_NATS_URL_FILE): give one")
		}
		b, err := readSmall(c.URLFile)
		if err != nil {
			return "", nil, invalid("--nats-url-file: %w", err)
		}
		if urls = strings.TrimSpace(string(b)); urls == "" {
			return "", nil, invalid("--nats-url-file %s: empty", c.URLFile)
		}
	}
	if urls == "" {
		return "", nil, invalid("--nats-url: empty")
	}
	for p := range strings.SplitSeq(urls, ",") {
		p = strings.TrimSpace(p)
		if !strings.Contains(p, "://") {
			p = "nats://" + p // as the client reads it
		}
		if _, err := url.Parse(p); err != nil {
			reason := err
			if ue, ok := err.(*url.Error); ok {
				reason = ue.Err // without the URL itself
			}
			return "", nil, invalid("--nats-url: %s is not a valid URL: %w", redact.URI(p), redact.NewMasker(redact.Secrets(p)...).Err(reason))
		}
	}
	if c.Creds != "" && c.Nkey != "" {
		return "", nil, invalid("--nats-creds and --nats-nkey (or AUDITFLOW_NATS_CREDS and AUDITFLOW_NATS_NKEY): give one; a .creds file holds its own nkey")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return "", nil, invalid("--nats-tls-cert and --nats-tls-key: give both or neither")
	}
	for _, f := range []struct{ flag, path string }{{"nats-creds", c.Creds}, {"nats-tls-cert", c.TLSCert}, {"nats-tls-key", c.TLSKey}, {"nats-tls-ca", c.TLSCA}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return "", nil, invalid("--%s: %w", f.flag, err)
		}
	}
	var nkey nats.Option
	if c.Nkey != "" {
		if _, err := readSmall(c.Nkey); err != nil {
			return "", nil, invalid("--nats-nkey: %w", err)
		}
		// The client's own parser, which reads the seed again to sign
		// each connection's nonce; its errors are not shown: they come
		// from the file's content.
		opt, err := nats.NkeyOptionFromSeed(c.Nkey)
		if err != nil {
			return "", nil, invalid("--nats-nkey %s: not an nkey user seed (want a file holding a seed starting with SU, as nsc or \"nk -gen user\" writes it)", c.Nkey)
		}
		nkey = opt
	}
	return urls, nkey, nil
}

// readSmall reads a secret file of at most 64 KiB.
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, 64<<10+1)
	n, err := io.ReadFull(f, b)
	switch {
	case n > 64<<10:
		return nil, fmt.Errorf("%s: larger than 64 KiB", path)
	case err != nil && err != io.ErrUnexpectedEOF && err != io.EOF:
		return nil, err
	}
	return b[:n], nil
}

// Secrets returns the values of c's secrets, for masking output that may
// show them: the URLs' passwords and tokens, and what the URL, creds, nkey
// and TLS key files hold. Files that cannot be read are skipped.
func (c Config) Secrets() []string {
	_ = c.applyContext() // its errors are Validate's to report
	out := redact.Secrets(c.URL)
	for _, s := range []string{c.password, c.token} {
		if s != "" {
			out = append(out, s)
		}
	}
	for _, path := range []string{c.URLFile, c.Creds, c.Nkey, c.TLSKey} {
		if path == "" {
			continue
		}
		if b, err := readSmall(path); err == nil {
			out = append(out, redact.FileSecrets(string(b))...)
		}
	}
	return out
}

// Connect connects with reconnection forever (the stream outlives brief
// outages) and logs connection state changes.
func Connect(c Config, log *slog.Logger) (*nats.Conn, error) {
	if err := c.applyContext(); err != nil {
		return nil, err
	}
	urls, nkey, err := c.load()
	if err != nil {
		return nil, err
	}
	inbox, source, err := c.inboxPrefix(urls)
	if err != nil {
		return nil, err
	}
	log.Debug("NATS reply inboxes", "prefix", inbox, "from", source)
	opts := []nats.Option{
		nats.Name(c.Name), nats.CustomInboxPrefix(inbox), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second), nats.Timeout(5 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "server", nc.ConnectedUrlRedacted()) }),
		// Without a handler nats.go prints every asynchronous error on
		// stderr, a raw "nats: permissions violation …" line before the
		// command's own message. natsperm surfaces violations as the
		// failing request's error, naming the subject and what to do; the
		// rest go to the log.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			if errors.Is(err, nats.ErrPermissionViolation) {
				log.Debug("NATS permissions violation (reported by the request it fails)", "err", err, "subscription", subject)
				return
			}
			log.Warn("NATS asynchronous error", "err", err, "subscription", subject)
		}),
	}
	if c.Creds != "" {
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	if nkey != nil {
		opts = append(opts, nkey)
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if c.user != "" {
		opts = append(opts, nats.UserInfo(c.user, c.password))
	}
	if c.token != "" {
		opts = append(opts, nats.Token(c.token))
	}
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		c.URL = urls
		return nil, fmt.Errorf("connect to NATS at %s: %w (check the URL, that the server runs with JetStream, and credentials/TLS settings)",
			redact.URI(urls), redact.NewMasker(c.Secrets()...).Err(err))
	}
	return nc, nil
}

// Redact removes passwords and tokens from NATS URLs before they are
// shown; it is redact.URI.
func Redact(urls string) string { return redact.URI(urls) }

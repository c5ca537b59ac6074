// Package natsconn holds the NATS connection settings shared by the
// auditflow commands: flags with environment-variable defaults, and a
// Connect that applies them. Secrets (credentials files, keys) are read by
// the NATS client from files; their contents never reach a log.
package natsconn

import (
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Config is how to reach a NATS server or cluster.
type Config struct {
	URL     string // comma-separated server URLs
	Creds   string // path to a .creds file (JWT + nkey)
	TLSCert string // client certificate (mutual TLS)
	TLSKey  string
	TLSCA   string // CA to verify the server with
	Name    string // connection name shown in server monitoring
}

// Env returns the value of an environment variable, or def.
func Env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// RegisterFlags adds --nats-url, --nats-creds and --nats-tls-{cert,key,ca},
// each defaulting to its AUDITFLOW_NATS_* environment variable.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.URL, "nats-url", Env("AUDITFLOW_NATS_URL", nats.DefaultURL), "NATS server URLs, comma-separated [AUDITFLOW_NATS_URL]")
	fs.StringVar(&c.Creds, "nats-creds", Env("AUDITFLOW_NATS_CREDS", ""), "NATS credentials file [AUDITFLOW_NATS_CREDS]")
	fs.StringVar(&c.TLSCert, "nats-tls-cert", Env("AUDITFLOW_NATS_TLS_CERT", ""), "client certificate for mutual TLS [AUDITFLOW_NATS_TLS_CERT]")
	fs.StringVar(&c.TLSKey, "nats-tls-key", Env("AUDITFLOW_NATS_TLS_KEY", ""), "client key for mutual TLS [AUDITFLOW_NATS_TLS_KEY]")
	fs.StringVar(&c.TLSCA, "nats-tls-ca", Env("AUDITFLOW_NATS_TLS_CA", ""), "CA certificate to verify the server [AUDITFLOW_NATS_TLS_CA]")
}

// Validate checks that the settings fit together.
func (c Config) Validate() error {
	if c.URL == "" {
		return fmt.Errorf("nats-url: empty")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("nats-tls-cert and nats-tls-key: give both or neither")
	}
	for flagName, path := range map[string]string{"nats-creds": c.Creds, "nats-tls-cert": c.TLSCert, "nats-tls-key": c.TLSKey, "nats-tls-ca": c.TLSCA} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("%s: %w", flagName, err)
		}
	}
	return nil
}

// Connect connects with reconnection forever (the stream outlives brief
// outages) and logs connection state changes.
func Connect(c Config, log *slog.Logger) (*nats.Conn, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	opts := []nats.Option{
		nats.Name(c.Name), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second), nats.Timeout(5 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "server", nc.ConnectedUrlRedacted()) }),
	}
	if c.Creds != "" {
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	nc, err := nats.Connect(c.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w (check the URL, that the server runs with JetStream, and credentials/TLS settings)", Redact(c.URL), err)
	}
	return nc, nil
}

// Redact removes passwords and tokens from NATS URLs before they are shown.
func Redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = url.User("redacted")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}

package natsconn

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/nats-io/nats.go"
)

// natsContext is a NATS CLI context (nats context save NAME): the fields
// of ~/.config/nats/context/NAME.json that say how to connect. (The
// natscontext package of jsm.go reads the same files; it is not available
// to this build, so this reads them itself, with the same field names.)
type natsContext struct {
	URL      string `json:"url"`
	User     string `json:"user"`
	Password string `json:"password"`
	Token    string `json:"token"`
	Creds    string `json:"creds"`
	Nkey     string `json:"nkey"`
	Cert     string `json:"cert"`
	Key      string `json:"key"`
	CA       string `json:"ca"`
	// InboxPrefix is the context's reply-inbox prefix (nats context save
	// --inbox-prefix).
	InboxPrefix string `json:"inbox_prefix"`
}

var contextName = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// contextPath is where the NATS CLI keeps context NAME:
// $XDG_CONFIG_HOME/nats/context/NAME.json, by default under ~/.config.
func contextPath(name string) (string, error) {
	dir := os.Getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "nats", "context", name+".json"), nil
}

// applyContext fills what c leaves unset from the NATS CLI context named
// by c.Context: the URLs (unless --nats-url or --nats-url-file names
// others), the creds or nkey file, the TLS files, the inbox prefix, and a
// user and password or a token. Settings given explicitly win.
func (c *Config) applyContext() error {
	if c.Context == "" || c.contextLoaded {
		return nil
	}
	if !contextName.MatchString(c.Context) || c.Context == "." || c.Context == ".." {
		return fmt.Errorf("%w: --context %q: not a context name (letters, digits, '.', '-', '_')", ErrInvalidConfig, c.Context)
	}
	path, err := contextPath(c.Context)
	if err != nil {
		return fmt.Errorf("%w: --context %s: %w", ErrInvalidConfig, c.Context, err)
	}
	b, err := readSmall(path)
	if err != nil {
		return fmt.Errorf("%w: --context %s: %w (create it with: nats context save %s --server URL …)", ErrInvalidConfig, c.Context, err, c.Context)
	}
	var nc natsContext
	if err := json.Unmarshal(b, &nc); err != nil {
		return fmt.Errorf("%w: --context %s: %s is not a NATS context: %w", ErrInvalidConfig, c.Context, path, err)
	}
	if nc.URL != "" && c.URLFile == "" && (c.URL == "" || c.URL == nats.DefaultURL) {
		c.URL = nc.URL
	}
	if c.Creds == "" && c.Nkey == "" {
		c.Creds, c.Nkey = nc.Creds, nc.Nkey
	}
	if c.TLSCert == "" && c.TLSKey == "" {
		c.TLSCert, c.TLSKey = nc.Cert, nc.Key
	}
	if c.TLSCA == "" {
		c.TLSCA = nc.CA
	}
	if c.InboxPrefix == "" {
		c.InboxPrefix = nc.InboxPrefix
	}
	c.user, c.password, c.token = nc.User, nc.Password, nc.Token
	c.contextLoaded = true
	return nil
}

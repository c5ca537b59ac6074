// Package trustflags holds the command-line configuration of signed
// events — the signing key and the trust list, as flags with AUDITFLOW_*
// environment defaults — and loads them. The runner, the projector and
// the operator CLI share it, so keys and lists are configured the same
// way everywhere (see package trust).
package trustflags

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/auditflow/auditflow/trust"
)

// ErrInvalid: the signing key or the trust list could not be loaded (a
// missing or unreadable file, a bad key or list). Commands map it to
// their configuration exit code.
var ErrInvalid = errors.New("invalid signing configuration")

// Config is where the signing key and the trust list are.
type Config struct {
	// SigningKey is a file holding the key to sign events with: an nkey
	// seed (auditflow keys new) or a NATS .creds file. "": unsigned.
	SigningKey string
	// Trust is a trust list file (YAML; trust.ParseList). "": no checks.
	Trust string
}

// Environment variables the flags default to.
const (
	EnvSigningKey = "AUDITFLOW_SIGNING_KEY"
	EnvTrust      = "AUDITFLOW_TRUST"
)

// RegisterFlags adds --signing-key and --trust.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.RegisterSigningKeyFlag(fs)
	c.RegisterTrustFlag(fs)
}

// RegisterSigningKeyFlag adds --signing-key alone.
func (c *Config) RegisterSigningKeyFlag(fs *flag.FlagSet) {
	fs.StringVar(&c.SigningKey, "signing-key", os.Getenv(EnvSigningKey),
		"sign the events written with this key: an nkey seed file (auditflow keys new) or a NATS .creds file ["+EnvSigningKey+"]")
}

// RegisterTrustFlag adds --trust alone (for what only judges signatures).
func (c *Config) RegisterTrustFlag(fs *flag.FlagSet) {
	fs.StringVar(&c.Trust, "trust", os.Getenv(EnvTrust),
		"judge event signatures against this trust list (YAML: keys with name, roles, pipelines, revokedAfterSeq); unsigned, unknown-key and bad-signature events become issues ["+EnvTrust+"]")
}

// Load reads what is configured: nil for what is not. Errors wrap
// ErrInvalid.
func (c Config) Load() (*trust.Signer, *trust.List, error) {
	s, err := c.Signer()
	if err != nil {
		return nil, nil, err
	}
	l, err := c.List()
	if err != nil {
		return nil, nil, err
	}
	return s, l, nil
}

// Signer loads the signing key, nil if none is configured.
func (c Config) Signer() (*trust.Signer, error) {
	if c.SigningKey == "" {
		return nil, nil
	}
	s, err := trust.LoadSigner(c.SigningKey)
	if err != nil {
		return nil, fmt.Errorf("%w: --signing-key: %w", ErrInvalid, err)
	}
	return s, nil
}

// List loads the trust list, nil if none is configured.
func (c Config) List() (*trust.List, error) {
	if c.Trust == "" {
		return nil, nil
	}
	l, err := trust.LoadList(c.Trust)
	if err != nil {
		return nil, fmt.Errorf("%w: --trust: %w", ErrInvalid, err)
	}
	return l, nil
}

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
	"strconv"

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
	// Trust is a trust list file (YAML; trust.ParseList). "": no checks,
	// which Require refuses unless InsecureNoTrust.
	Trust string
	// InsecureNoTrust runs without a trust list on purpose: every event is
	// believed, signed or not. Outside the embedded mode nothing runs so
	// by default (Require).
	InsecureNoTrust bool
}

// Environment variables the flags default to.
const (
	EnvSigningKey = "AUDITFLOW_SIGNING_KEY"
	EnvTrust      = "AUDITFLOW_TRUST"
	EnvInsecure   = "AUDITFLOW_INSECURE_NO_TRUST"
)

// ErrNoTrust: no trust list was given and running without one was not
// asked for (see Config.Require). It wraps ErrInvalid.
var ErrNoTrust = fmt.Errorf("%w: no trust list", ErrInvalid)

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

// RegisterTrustFlag adds --trust and --insecure-no-trust (alone, for what
// only judges signatures).
func (c *Config) RegisterTrustFlag(fs *flag.FlagSet) {
	insecure, _ := strconv.ParseBool(os.Getenv(EnvInsecure))
	fs.BoolVar(&c.InsecureNoTrust, "insecure-no-trust", insecure,
		"run without a trust list: every event is believed, signed or not (logged at WARN, shown in stats and /metrics); without it, a missing --trust is refused outside the embedded mode ["+EnvInsecure+"]")
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

// Unchecked reports whether signatures go unchecked on purpose: no trust
// list, and InsecureNoTrust. What runs so says so (a WARN log, stats,
// /metrics).
func (c Config) Unchecked() bool { return c.Trust == "" && c.InsecureNoTrust }

// Require checks that a trust list is given, or that running without one
// was asked for (InsecureNoTrust). embedded (the single-user embedded
// mode, whose own key and list are made for it) needs neither. Its error
// wraps ErrNoTrust and says what to do.
func (c Config) Require(embedded bool) error {
	switch {
	case c.Trust != "" || c.InsecureNoTrust || embedded: // a list given is used, whatever else
		return nil
	}
	return fmt.Errorf("%w: without --trust (or %s) signatures are not checked, and any event anyone with publish rights writes — a forged ExecutionSucceeded, a copied runner id — is believed. Give the trust list (auditflow keys new writes a key and its entry; see docs/security.md, Signed events), or --insecure-no-trust (%s=true) to run without one on purpose",
		ErrNoTrust, EnvTrust, EnvInsecure)
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

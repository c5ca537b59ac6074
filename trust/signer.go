package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nkeys"

	"github.com/auditflow/auditflow/events"
)

// Header is the NATS header that carries an event's signature:
// "<signer's public key> <base64url signature>".
const Header = "Auditflow-Signature"

// domain starts every signed message, so that a signature over an event
// can never be one over anything else the key signs.
const domain = "auditflow-event-signature-v1\n"

// message is what is signed for an event whose bytes hash to hash
// (events.Hash).
func message(hash string) []byte { return []byte(domain + hash) }

// Sizes of the header's parts: a user public key is 56 characters, an
// ed25519 signature 64 bytes, 86 characters in unpadded base64url.
const (
	publicKeyLen = 56
	signatureLen = 86
	// MaxHeaderLen bounds a well-formed header value.
	MaxHeaderLen = publicKeyLen + 1 + signatureLen
)

// Signer signs events with one ed25519 user nkey.
type Signer struct {
	pub  string
	priv ed25519.PrivateKey
}

// NewSigner returns a signer for a user key pair (its seed starts "SU").
func NewSigner(kp nkeys.KeyPair) (*Signer, error) {
	seed, err := kp.Seed()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return signerFromSeed(seed)
}

func signerFromSeed(seed []byte) (*Signer, error) {
	prefix, raw, err := nkeys.DecodeSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	if prefix != nkeys.PrefixByteUser {
		return nil, fmt.Errorf("%w: a %s seed; want a user seed (SU…), as `auditflow keys new` or `nk -gen user` make", ErrInvalidKey, prefix)
	}
	priv := ed25519.NewKeyFromSeed(raw)
	pub, err := nkeys.Encode(nkeys.PrefixByteUser, priv.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return &Signer{pub: string(pub), priv: priv}, nil
}

// LoadSigner reads a signing key from a file: an nkey seed file (one
// line, "SU…"), or a NATS .creds file, whose user seed it uses (see the
// package documentation on reusing a NATS nkey).
func LoadSigner(path string) (*Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("trust: signing key: %w", err)
	}
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		return nil, fmt.Errorf("%w: signing key %s: %w", ErrInvalidKey, path, err)
	}
	defer kp.Wipe()
	s, err := NewSigner(kp)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	return s, nil
}

// NewKeyFile creates a new user key and writes its seed to path (mode
// 0600), refusing to overwrite an existing file. It returns its signer.
func NewKeyFile(path string) (*Signer, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("trust: create key: %w", err)
	}
	defer kp.Wipe()
	seed, err := kp.Seed()
	if err != nil {
		return nil, fmt.Errorf("trust: create key: %w", err)
	}
	s, err := signerFromSeed(seed)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("trust: write key: %w", err)
	}
	_, err = f.Write(append(seed, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("trust: write key: %w", err)
	}
	return s, nil
}

// PublicKey is the signer's public key ("U…"), as trust lists name it.
func (s *Signer) PublicKey() string { return s.pub }

// Sign returns the Header value for an event published as data.
func (s *Signer) Sign(data []byte) string { return s.SignHash(events.Hash(data)) }

// SignHash is Sign for an event whose bytes hash to hash (events.Hash).
func (s *Signer) SignHash(hash string) string {
	sig := ed25519.Sign(s.priv, message(hash))
	return s.pub + " " + sigEncoding.EncodeToString(sig)
}

// sigEncoding is unpadded base64url, strict: one signature has one
// spelling, so a copied signature is recognisable as such.
var sigEncoding = base64.RawURLEncoding.Strict()

// ParseHeader splits a Header value into the signer's public key and the
// signature (base64url), checking their form but not the signature.
func ParseHeader(v string) (signer, signature string, err error) {
	if len(v) > MaxHeaderLen {
		return "", "", fmt.Errorf("%w: %d bytes, longer than any signature", ErrMalformedHeader, len(v))
	}
	signer, signature, ok := strings.Cut(v, " ")
	switch {
	case !ok:
		return "", "", fmt.Errorf("%w: want \"<public key> <signature>\"", ErrMalformedHeader)
	case !nkeys.IsValidPublicUserKey(signer):
		return "", "", fmt.Errorf("%w: %q is not a user public key", ErrMalformedHeader, clip(signer))
	case len(signature) != signatureLen:
		return "", "", fmt.Errorf("%w: the signature is %d characters, want %d", ErrMalformedHeader, len(signature), signatureLen)
	}
	if _, err := sigEncoding.DecodeString(signature); err != nil {
		return "", "", fmt.Errorf("%w: the signature is not base64url", ErrMalformedHeader)
	}
	return signer, signature, nil
}

// verify reports whether signature (base64url) is pub's over the event
// whose bytes hash to hash.
func verify(pub ed25519.PublicKey, hash, signature string) bool {
	sig, err := sigEncoding.DecodeString(signature)
	return err == nil && len(sig) == ed25519.SignatureSize && ed25519.Verify(pub, message(hash), sig)
}

// decodePublic decodes a user public key.
func decodePublic(key string) (ed25519.PublicKey, error) {
	raw, err := nkeys.Decode(nkeys.PrefixByteUser, []byte(key))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: %q is not a user public key (U…)", ErrInvalidKey, clip(key))
	}
	return ed25519.PublicKey(raw), nil
}

// Files LocalKey keeps in its directory.
const (
	LocalKeyFile   = "signing.nk"
	LocalTrustFile = "trust.yaml"
)

// LocalName is the name LocalKey's list gives its key.
const LocalName = "local"

// LocalKey is the embedded mode's zero-setup signing. It loads
// <dir>/signing.nk and <dir>/trust.yaml, creating them on first use: a new
// user key (mode 0600), and a trust list that trusts it, and only it, as
// runner and operator on every pipeline. lastSeq is the audit stream's
// last sequence now: on first use the events already on the stream were
// written unsigned, before the key existed, and the list accepts them
// (List.WithUnsignedUpTo), so an existing data directory keeps working.
// The list file can be edited like any trust list; if it is removed, it
// is written again without accepting unsigned history.
func LocalKey(dir string, lastSeq uint64) (*Signer, *List, error) {
	keyPath, listPath := filepath.Join(dir, LocalKeyFile), filepath.Join(dir, LocalTrustFile)
	s, err := LoadSigner(keyPath)
	created := false
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, nil, fmt.Errorf("trust: local key: %w", err)
		}
		s, err = NewKeyFile(keyPath)
		created = err == nil
		if errors.Is(err, fs.ErrExist) { // another process made it first
			s, err = LoadSigner(keyPath)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	l, err := LoadList(listPath)
	if !errors.Is(err, fs.ErrNotExist) {
		return s, l, err
	}
	if l, err = NewList(Key{Key: s.PublicKey(), Name: LocalName, Roles: []Role{RoleRunner, RoleOperator}, Pipelines: []string{AllPipelines}}); err != nil {
		return nil, nil, err
	}
	if created {
		l = l.WithUnsignedUpTo(lastSeq)
	}
	b, err := l.Marshal()
	if err == nil {
		err = os.WriteFile(listPath, b, 0o644)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("trust: local trust list: %w", err)
	}
	return s, l, nil
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "…"
	}
	return string(bytes.ToValidUTF8([]byte(s), []byte("?")))
}

package trust

import (
	"crypto/ed25519"
	"fmt"
	"slices"

	"github.com/auditflow/auditflow/events"
)

// bundleDomain separates a bundle manifest's signature from an event's: a
// manifest signature can never pass for an event's, nor the reverse.
const bundleDomain = "auditflow-bundle-manifest-v1\n"

func bundleMessage(b []byte) []byte { return []byte(bundleDomain + events.Hash(b)) }

// SignManifest signs the exact bytes of an audit bundle's manifest and
// returns "<public key> <base64url signature>", the Header form.
func (s *Signer) SignManifest(b []byte) string {
	return s.pub + " " + sigEncoding.EncodeToString(ed25519.Sign(s.priv, bundleMessage(b)))
}

// CheckManifest judges a bundle manifest's signature (SignManifest's
// form): the key must be in the list as an operator, not revoked, and
// the signature over these bytes. It returns the signer's identity and
// an error wrapping ErrNotTrusted when the manifest is not to be believed.
func (l *List) CheckManifest(sig string, b []byte) (string, error) {
	signer, signature, err := ParseHeader(sig)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrNotTrusted, err)
	}
	if l == nil {
		return "", fmt.Errorf("%w: no trust list", ErrNotTrusted)
	}
	k, ok := l.byKey[signer]
	switch {
	case !ok:
		return signer, fmt.Errorf("%w: unknown key %s", ErrNotTrusted, clip(signer))
	case !slices.Contains(k.Roles, RoleOperator):
		return l.Identity(signer), fmt.Errorf("%w: key %s is not an operator's (roles %v)", ErrNotTrusted, l.Identity(signer), k.Roles)
	case k.RevokedAfterSeq != nil:
		return l.Identity(signer), fmt.Errorf("%w: key %s is revoked", ErrNotTrusted, l.Identity(signer))
	}
	s, err := sigEncoding.DecodeString(signature)
	if err != nil || !ed25519.Verify(k.pub, bundleMessage(b), s) {
		return l.Identity(signer), fmt.Errorf("%w: bad signature: %s did not sign these bytes", ErrNotTrusted, l.Identity(signer))
	}
	return l.Identity(signer), nil
}

package trust

import "errors"

// Sentinel errors.
var (
	// ErrInvalidKey: a seed or public key is not a valid user nkey.
	ErrInvalidKey = errors.New("trust: invalid key")
	// ErrInvalidList: a trust list does not parse or validate.
	ErrInvalidList = errors.New("trust: invalid trust list")
	// ErrMalformedHeader: an Auditflow-Signature header is not
	// "<public key> <base64url signature>".
	ErrMalformedHeader = errors.New("trust: malformed signature header")
	// ErrNotTrusted: a key may not sign what it is asked to (see
	// List.Allows).
	ErrNotTrusted = errors.New("trust: key not trusted")
)

package trust

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/auditflow/auditflow/events"
)

// Role is what a key may sign.
type Role string

// Roles.
const (
	// RoleRunner signs what runners write: every type but ManuallyResolved.
	RoleRunner Role = "runner"
	// RoleOperator signs operators' decisions: ManuallyResolved.
	RoleOperator Role = "operator"
)

// AllPipelines in a key's pipelines trusts it for every pipeline.
const AllPipelines = "*"

// MaxNameLen bounds a key's name in a trust list.
const MaxNameLen = 128

// RoleOf is the role whose keys may sign events of type t. A runner marks
// a change uncertain and records overlapped executions itself, so those
// are runner events; only the operator's decision is not.
func RoleOf(t events.Type) Role {
	if t == events.ManuallyResolved {
		return RoleOperator
	}
	return RoleRunner
}

// Key is one entry of a trust list.
type Key struct {
	// Key is the public user nkey ("U…").
	Key string `yaml:"key" json:"key"`
	// Name says whose key it is; it is how reports and operator
	// identities name the key.
	Name      string   `yaml:"name" json:"name"`
	Roles     []Role   `yaml:"roles" json:"roles"`
	Pipelines []string `yaml:"pipelines" json:"pipelines"` // names, or "*" for all
	// RevokedAfterSeq, if set, revokes the key from that stream sequence
	// on: its events at a higher sequence are untrusted.
	RevokedAfterSeq *uint64 `yaml:"revokedAfterSeq,omitempty" json:"revokedAfterSeq,omitempty"`
}

// YAML is the key as a trust-list entry, for pasting into a list.
func (k Key) YAML() string {
	b, _ := yaml.Marshal([]Key{k})
	return string(b)
}

// List is a trust list: the keys whose signatures are believed, and for
// what. A nil *List trusts everything (no list configured): Check returns
// a trusted verdict for every event, signed or not.
type List struct {
	keys  []Key
	byKey map[string]*listed
	// unsignedUpTo: unsigned events at stream sequences up to it were
	// written before signing was turned on, and are accepted (0: none).
	unsignedUpTo uint64
}

type listed struct {
	Key
	pub ed25519.PublicKey
}

type listFile struct {
	// UnsignedUpToSeq accepts unsigned events up to this stream sequence:
	// the history written before signing was turned on.
	UnsignedUpToSeq *uint64 `yaml:"unsignedUpToSeq,omitempty"`
	Keys            []Key   `yaml:"keys"`
}

// LoadList reads a trust list file (see ParseList).
func LoadList(path string) (*List, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("trust: trust list: %w", err)
	}
	l, err := ParseList(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return l, nil
}

// ParseList parses a trust list: YAML with a top-level field keys, a list
// of entries with key, name, roles, pipelines and optionally
// revokedAfterSeq (see Key and the package documentation), and optionally
// unsignedUpToSeq (see WithUnsignedUpTo). Decoding is strict: an unknown
// field (a misspelt revokedAfterSeq) is an error, not a key that is never
// revoked.
func ParseList(b []byte) (*List, error) {
	var f listFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty", ErrInvalidList)
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalidList, err)
	}
	l, err := NewList(f.Keys...)
	if err != nil || f.UnsignedUpToSeq == nil {
		return l, err
	}
	return l.WithUnsignedUpTo(*f.UnsignedUpToSeq), nil
}

// WithUnsignedUpTo returns a copy of l that also accepts unsigned events
// at stream sequences up to seq: the history written before signing was
// turned on (set it to the sequence of the last event written unsigned).
// The stream assigns sequences, so an unsigned event published later
// cannot pass for history. A malformed signature is never accepted.
func (l *List) WithUnsignedUpTo(seq uint64) *List {
	c := *l
	c.unsignedUpTo = seq
	return &c
}

// UnsignedUpTo is the sequence up to which unsigned events are accepted
// (0: none).
func (l *List) UnsignedUpTo() uint64 {
	if l == nil {
		return 0
	}
	return l.unsignedUpTo
}

// Marshal writes l in the format ParseList reads.
func (l *List) Marshal() ([]byte, error) {
	f := listFile{Keys: l.Keys()}
	if l.unsignedUpTo > 0 {
		f.UnsignedUpToSeq = &l.unsignedUpTo
	}
	return yaml.Marshal(f)
}

// NewList builds a trust list from keys, checking each.
func NewList(keys ...Key) (*List, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no keys", ErrInvalidList)
	}
	l := &List{byKey: make(map[string]*listed, len(keys))}
	for i, k := range keys {
		where := fmt.Sprintf("key %d (%s)", i+1, k.Name)
		pub, err := decodePublic(k.Key)
		switch {
		case err != nil:
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalidList, where, err)
		case l.byKey[k.Key] != nil:
			return nil, fmt.Errorf("%w: %s: %s is listed twice", ErrInvalidList, where, k.Key)
		case k.Name == "" || len(k.Name) > MaxNameLen:
			return nil, fmt.Errorf("%w: %s: a name of 1 to %d bytes is required", ErrInvalidList, where, MaxNameLen)
		case len(k.Roles) == 0:
			return nil, fmt.Errorf("%w: %s: no roles (want runner and/or operator)", ErrInvalidList, where)
		case len(k.Pipelines) == 0:
			return nil, fmt.Errorf("%w: %s: no pipelines (want names, or \"*\" for all)", ErrInvalidList, where)
		}
		for _, r := range k.Roles {
			if r != RoleRunner && r != RoleOperator {
				return nil, fmt.Errorf("%w: %s: unknown role %q (want runner or operator)", ErrInvalidList, where, r)
			}
		}
		for _, p := range k.Pipelines {
			if p == "" || len(p) > events.MaxKeyLen {
				return nil, fmt.Errorf("%w: %s: pipeline %q is empty or longer than %d bytes", ErrInvalidList, where, p, events.MaxKeyLen)
			}
		}
		l.keys = append(l.keys, k)
		l.byKey[k.Key] = &listed{Key: k, pub: pub}
	}
	return l, nil
}

// Keys returns the list's entries, in order.
func (l *List) Keys() []Key {
	if l == nil {
		return nil
	}
	return slices.Clone(l.keys)
}

// Lookup returns the entry of a public key.
func (l *List) Lookup(key string) (Key, bool) {
	if l == nil {
		return Key{}, false
	}
	k, ok := l.byKey[key]
	if !ok {
		return Key{}, false
	}
	return k.Key, true
}

// Identity names a key for people: "<name> (<key>)" if the list has it,
// else the key.
func (l *List) Identity(key string) string {
	if k, ok := l.Lookup(key); ok {
		return k.Name + " (" + key + ")"
	}
	return key
}

// Allows checks that key may sign events of type t for pipeline now, as
// Check would judge it, signature aside (not revoked: a writer checks its
// own key before it writes). The error wraps ErrNotTrusted. A nil list
// allows everything.
func (l *List) Allows(key string, t events.Type, pipeline string) error {
	if l == nil {
		return nil
	}
	k, ok := l.byKey[key]
	if !ok {
		return fmt.Errorf("%w: %s is not in the trust list", ErrNotTrusted, key)
	}
	if k.RevokedAfterSeq != nil {
		return fmt.Errorf("%w: %s is revoked after sequence %d", ErrNotTrusted, l.Identity(key), *k.RevokedAfterSeq)
	}
	if v := k.scope(l, t, pipeline); v.Problem != "" {
		return fmt.Errorf("%w: %s", ErrNotTrusted, v.Problem)
	}
	return nil
}

// Kind classifies an untrusted verdict.
type Kind string

// Kinds of problem. Replayed is not Check's: it takes the whole stream to
// see (a signature, or signed bytes, seen before on another event), and
// verify reports it.
const (
	KindUnsigned     Kind = "unsigned"
	KindUnknownKey   Kind = "unknown key"
	KindBadSignature Kind = "bad signature"
	KindRole         Kind = "role"
	KindPipeline     Kind = "pipeline"
	KindRevoked      Kind = "revoked"
	KindReplayed     Kind = "replayed"
)

// Verdict is Check's judgement of one event.
type Verdict struct {
	// Kind and Problem are "" when the event is trusted; otherwise Problem
	// says why not, for people and for the event's store row.
	Kind    Kind   `json:"kind,omitempty"`
	Problem string `json:"problem,omitempty"`
	// Name is the trust list's name of the signer, if listed.
	Name string `json:"name,omitempty"`
}

// Trusted reports whether the verdict is clean.
func (v Verdict) Trusted() bool { return v.Problem == "" }

// Signed is what Check needs to know of one event: where it is on the
// stream, what it is, the hash of its exact bytes, and its signature
// ("" if unsigned).
type Signed struct {
	Pipeline  string
	Type      events.Type
	Seq       uint64 // stream sequence
	Hash      string // events.Hash of its bytes
	Signer    string // public key
	Signature string // base64url
}

// Check judges an event's signature. A nil list trusts everything.
func (l *List) Check(s Signed) Verdict {
	if l == nil {
		return Verdict{}
	}
	if s.Signer == "" && s.Signature == "" {
		if s.Seq <= l.unsignedUpTo {
			return Verdict{} // history from before signing
		}
		return Verdict{Kind: KindUnsigned, Problem: "unsigned: no " + Header + " header"}
	}
	k, ok := l.byKey[s.Signer]
	if !ok {
		return Verdict{Kind: KindUnknownKey, Problem: "unknown key " + clip(s.Signer)}
	}
	if !verify(k.pub, s.Hash, s.Signature) {
		return Verdict{Kind: KindBadSignature, Name: k.Name,
			Problem: "bad signature: " + l.Identity(s.Signer) + " did not sign these bytes (altered, or a signature copied from another event)"}
	}
	if k.RevokedAfterSeq != nil && s.Seq > *k.RevokedAfterSeq {
		return Verdict{Kind: KindRevoked, Name: k.Name,
			Problem: "key " + l.Identity(s.Signer) + " revoked after sequence " + strconv.FormatUint(*k.RevokedAfterSeq, 10)}
	}
	return k.scope(l, s.Type, s.Pipeline)
}

// scope checks the key's roles and pipelines.
func (k *listed) scope(l *List, t events.Type, pipeline string) Verdict {
	if role := RoleOf(t); !slices.Contains(k.Roles, role) {
		return Verdict{Kind: KindRole, Name: k.Name,
			Problem: fmt.Sprintf("key %s may not sign %s (roles %v; %s needs %s)", l.Identity(k.Key.Key), t, k.Roles, t, role)}
	}
	if !slices.Contains(k.Pipelines, AllPipelines) && !slices.Contains(k.Pipelines, pipeline) {
		return Verdict{Kind: KindPipeline, Name: k.Name,
			Problem: fmt.Sprintf("key %s is not trusted for pipeline %q", l.Identity(k.Key.Key), clip(pipeline))}
	}
	return Verdict{Name: k.Name}
}

// CheckHeader judges an event from its Header value (as read from the
// message; "" if none) and returns the signer and signature to keep with
// its row — both "" if the header is absent or malformed — with the
// verdict. A malformed header is a bad signature. With a nil list the
// verdict is always trusted, and a well-formed signature is still
// returned, to keep.
func (l *List) CheckHeader(header string, s Signed) (signer, signature string, v Verdict) {
	if header == "" {
		return "", "", l.Check(s)
	}
	signer, signature, err := ParseHeader(header)
	if err != nil {
		if l == nil {
			return "", "", Verdict{}
		}
		return "", "", Verdict{Kind: KindBadSignature, Problem: "bad signature: " + strings.TrimPrefix(err.Error(), "trust: ")}
	}
	s.Signer, s.Signature = signer, signature
	return signer, signature, l.Check(s)
}

package trust_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"

	"github.com/auditflow/auditflow/events"
	"github.com/auditflow/auditflow/trust"
)

func newSigner(t testing.TB) *trust.Signer {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	s, err := trust.NewSigner(kp)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func seq(n uint64) *uint64 { return &n }

// TestCheck: every verdict Check can give, from one list.
func TestCheck(t *testing.T) {
	runnerKey, operatorKey, billingOnly, revoked, stranger := newSigner(t), newSigner(t), newSigner(t), newSigner(t), newSigner(t)
	l, err := trust.NewList(
		trust.Key{Key: runnerKey.PublicKey(), Name: "runner-1", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{"*"}},
		trust.Key{Key: operatorKey.PublicKey(), Name: "alice", Roles: []trust.Role{trust.RoleOperator}, Pipelines: []string{"*"}},
		trust.Key{Key: billingOnly.PublicKey(), Name: "billing", Roles: []trust.Role{trust.RoleRunner, trust.RoleOperator}, Pipelines: []string{"billing"}},
		trust.Key{Key: revoked.PublicKey(), Name: "old", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{"*"}, RevokedAfterSeq: seq(10)},
	)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte(`{"some":"event bytes"}`)
	hash := events.Hash(data)
	other := events.Hash([]byte("other bytes"))
	for _, c := range []struct {
		name     string
		header   string
		typ      events.Type
		pipeline string
		seq      uint64
		hash     string
		kind     trust.Kind
		problem  string
	}{
		{"runner event", runnerKey.Sign(data), events.ExecutionSucceeded, "shipping", 5, hash, "", ""},
		{"operator resolution", operatorKey.Sign(data), events.ManuallyResolved, "shipping", 5, hash, "", ""},
		{"unsigned", "", events.ExecutionSucceeded, "shipping", 5, hash, trust.KindUnsigned, "unsigned"},
		{"unknown key", stranger.Sign(data), events.ExecutionSucceeded, "shipping", 5, hash, trust.KindUnknownKey, "unknown key " + stranger.PublicKey()},
		{"altered bytes", runnerKey.Sign(data), events.ExecutionSucceeded, "shipping", 5, other, trust.KindBadSignature, "bad signature: runner-1"},
		{"malformed", "garbage", events.ExecutionSucceeded, "shipping", 5, hash, trust.KindBadSignature, "malformed"},
		{"runner signs a resolution", runnerKey.Sign(data), events.ManuallyResolved, "shipping", 5, hash, trust.KindRole, "may not sign ManuallyResolved"},
		{"operator signs a success", operatorKey.Sign(data), events.ExecutionSucceeded, "shipping", 5, hash, trust.KindRole, "may not sign ExecutionSucceeded"},
		{"other pipeline", billingOnly.Sign(data), events.ExecutionStarted, "shipping", 5, hash, trust.KindPipeline, `not trusted for pipeline "shipping"`},
		{"own pipeline", billingOnly.Sign(data), events.ExecutionStarted, "billing", 5, hash, "", ""},
		{"before revocation", revoked.Sign(data), events.ExecutionStarted, "billing", 10, hash, "", ""},
		{"after revocation", revoked.Sign(data), events.ExecutionStarted, "billing", 11, hash, trust.KindRevoked, "revoked after sequence 10"},
	} {
		t.Run(c.name, func(t *testing.T) {
			signer, sig, v := l.CheckHeader(c.header, trust.Signed{Pipeline: c.pipeline, Type: c.typ, Seq: c.seq, Hash: c.hash})
			if v.Kind != c.kind || !strings.Contains(v.Problem, c.problem) || v.Trusted() != (c.kind == "") {
				t.Fatalf("verdict %+v, want kind %q saying %q", v, c.kind, c.problem)
			}
			if c.header != "" && c.kind != trust.KindBadSignature && (signer == "" || sig == "") {
				t.Fatalf("signer %q signature %q not returned", signer, sig)
			}
			// The row's fields alone give the same verdict.
			if again := l.Check(trust.Signed{Pipeline: c.pipeline, Type: c.typ, Seq: c.seq, Hash: c.hash, Signer: signer, Signature: sig}); c.name != "malformed" && again != v {
				t.Fatalf("Check from the row = %+v, CheckHeader = %+v", again, v)
			}
			// No list: everything is trusted, a good header still kept.
			if s2, _, v := (*trust.List)(nil).CheckHeader(c.header, trust.Signed{Hash: c.hash}); !v.Trusted() || s2 != signer {
				t.Fatalf("nil list: %q %+v", s2, v)
			}
		})
	}
	if err := l.Allows(operatorKey.PublicKey(), events.ManuallyResolved, "x"); err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		l.Allows(runnerKey.PublicKey(), events.ManuallyResolved, "x"),
		l.Allows(stranger.PublicKey(), events.ExecutionStarted, "x"),
		l.Allows(revoked.PublicKey(), events.ExecutionStarted, "x"),
		l.Allows(billingOnly.PublicKey(), events.ExecutionStarted, "x"),
	} {
		if !errors.Is(err, trust.ErrNotTrusted) {
			t.Errorf("Allows = %v, want ErrNotTrusted", err)
		}
	}
	if got, want := l.Identity(operatorKey.PublicKey()), "alice ("+operatorKey.PublicKey()+")"; got != want {
		t.Fatalf("Identity = %q, want %q", got, want)
	}
}

// TestParseList: the file format, strictly.
func TestParseList(t *testing.T) {
	k := newSigner(t).PublicKey()
	good := "keys:\n  - key: " + k + "\n    name: alice\n    roles: [operator]\n    pipelines: [\"*\"]\n    revokedAfterSeq: 7\n"
	l, err := trust.ParseList([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := l.Lookup(k); !ok || got.Name != "alice" || got.RevokedAfterSeq == nil || *got.RevokedAfterSeq != 7 {
		t.Fatalf("Lookup = %+v %v", got, ok)
	}
	// unsignedUpToSeq, and Marshal writes what ParseList reads.
	withHistory, err := trust.ParseList([]byte("unsignedUpToSeq: 41\n" + good))
	if err != nil || withHistory.UnsignedUpTo() != 41 {
		t.Fatalf("unsignedUpToSeq: %v %v", withHistory, err)
	}
	b, err := withHistory.Marshal()
	if again, err2 := trust.ParseList(b); err != nil || err2 != nil || again.UnsignedUpTo() != 41 || len(again.Keys()) != 1 {
		t.Fatalf("Marshal round trip:\n%s\n%v %v", b, err, err2)
	}
	// The snippet keys new prints parses back.
	snippet := "keys:\n" + indent(trust.Key{Key: k, Name: "bob", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{"billing"}}.YAML())
	if _, err := trust.ParseList([]byte(snippet)); err != nil {
		t.Fatalf("snippet %q: %v", snippet, err)
	}
	for name, doc := range map[string]string{
		"empty":          "",
		"no keys":        "keys: []\n",
		"misspelt field": strings.Replace(good, "revokedAfterSeq", "revokedAfter", 1),
		"unknown role":   strings.Replace(good, "[operator]", "[admin]", 1),
		"no roles":       strings.Replace(good, "[operator]", "[]", 1),
		"no pipelines":   strings.Replace(good, `["*"]`, "[]", 1),
		"no name":        strings.Replace(good, "alice", `""`, 1),
		"bad key":        strings.Replace(good, k, "UNOTAKEY", 1),
		"seed as key":    strings.Replace(good, k, "SUAKEY", 1),
		"twice":          good + strings.TrimPrefix(good, "keys:\n"),
	} {
		if _, err := trust.ParseList([]byte(doc)); !errors.Is(err, trust.ErrInvalidList) {
			t.Errorf("%s: ParseList = %v, want ErrInvalidList", name, err)
		}
	}
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ") + "\n"
}

// TestKeyFiles: keys new writes a seed only its owner reads and never
// overwrites; a seed file and a .creds file both load; LocalKey makes its
// key once and trusts it for everything.
func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "alice.nk")
	s, err := trust.NewKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode(), err)
	}
	if _, err := trust.NewKeyFile(path); err == nil {
		t.Fatal("NewKeyFile overwrote an existing key")
	}
	again, err := trust.LoadSigner(path)
	if err != nil || again.PublicKey() != s.PublicKey() {
		t.Fatalf("LoadSigner = %v, %v", again, err)
	}
	seed, _ := os.ReadFile(path)
	creds := "-----BEGIN NATS USER JWT-----\neyJhbGciOi.x.y\n------END NATS USER JWT------\n\n" +
		"-----BEGIN USER NKEY SEED-----\n" + strings.TrimSpace(string(seed)) + "\n------END USER NKEY SEED------\n"
	credsPath := filepath.Join(dir, "user.creds")
	if err := os.WriteFile(credsPath, []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := trust.LoadSigner(credsPath); err != nil || c.PublicKey() != s.PublicKey() {
		t.Fatalf("LoadSigner(.creds) = %v, %v", c, err)
	}
	acct, _ := nkeys.CreateAccount()
	aseed, _ := acct.Seed()
	if err := os.WriteFile(filepath.Join(dir, "acct.nk"), aseed, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := trust.LoadSigner(filepath.Join(dir, "acct.nk")); !errors.Is(err, trust.ErrInvalidKey) {
		t.Fatalf("LoadSigner(account seed) = %v, want ErrInvalidKey", err)
	}

	local := filepath.Join(dir, "data")
	ls, list, err := trust.LocalKey(local, 5) // a data directory with 5 unsigned events
	if err != nil {
		t.Fatal(err)
	}
	ls2, list2, err := trust.LocalKey(local, 99)
	if err != nil || ls2.PublicKey() != ls.PublicKey() || list2.UnsignedUpTo() != 5 {
		t.Fatalf("second LocalKey: key %v, unsigned up to %d, %v; want the same key and list", ls2.PublicKey() == ls.PublicKey(), list2.UnsignedUpTo(), err)
	}
	for seq, trusted := range map[uint64]bool{5: true, 6: false} {
		if v := list.Check(trust.Signed{Pipeline: "p", Type: events.ExecutionSucceeded, Seq: seq, Hash: events.Hash(nil)}); v.Trusted() != trusted {
			t.Errorf("unsigned event at seq %d: %+v, want trusted %v", seq, v, trusted)
		}
	}
	for _, typ := range events.Types {
		if err := list.Allows(ls.PublicKey(), typ, "any-pipeline"); err != nil {
			t.Fatalf("local key may not sign %s: %v", typ, err)
		}
	}
}

// BenchmarkCheck: the cost of judging one signed event, which a projector
// pays per event (go test ./trust -run XXX -bench Check).
func BenchmarkCheck(b *testing.B) {
	s := newSigner(b)
	l, err := trust.NewList(trust.Key{Key: s.PublicKey(), Name: "r", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{"*"}})
	if err != nil {
		b.Fatal(err)
	}
	data := []byte(`{"specversion":"1.0","id":"x"}`)
	header := s.Sign(data)
	at := trust.Signed{Pipeline: "p", Type: events.ExecutionSucceeded, Seq: 1, Hash: events.Hash(data)}
	for b.Loop() {
		if _, _, v := l.CheckHeader(header, at); !v.Trusted() {
			b.Fatal(v)
		}
	}
}

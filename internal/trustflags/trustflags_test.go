package trustflags_test

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/auditflow/auditflow/internal/trustflags"
	"github.com/auditflow/auditflow/trust"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "runner.nk")
	s, err := trust.NewKeyFile(key)
	if err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(dir, "trust.yaml")
	entry := trust.Key{Key: s.PublicKey(), Name: "runner-1", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{"*"}}
	if err := os.WriteFile(list, []byte("keys:\n  - key: "+entry.Key+"\n    name: runner-1\n    roles: [runner]\n    pipelines: [\"*\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Setenv(trustflags.EnvTrust, list)
	var c trustflags.Config
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"--signing-key", key}); err != nil {
		t.Fatal(err)
	}
	signer, l, err := c.Load()
	if err != nil || signer.PublicKey() != s.PublicKey() || l.Identity(s.PublicKey()) != "runner-1 ("+s.PublicKey()+")" {
		t.Fatalf("Load = %v %v %v", signer, l, err)
	}
	if s, l, err := (trustflags.Config{}).Load(); s != nil || l != nil || err != nil {
		t.Fatalf("nothing configured: %v %v %v", s, l, err)
	}
	for _, c := range []trustflags.Config{{SigningKey: list}, {Trust: key}, {Trust: filepath.Join(dir, "missing.yaml")}} {
		if _, _, err := c.Load(); !errors.Is(err, trustflags.ErrInvalid) {
			t.Errorf("Load(%+v) = %v, want ErrInvalid", c, err)
		}
	}
}

//go:build unix

package faulttest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/auditflow/auditflow/internal/trusttest"
	"github.com/auditflow/auditflow/producer"
	"github.com/auditflow/auditflow/trust"
)

// TestDeployExportAsOperator exports audit bundles as the deployment's
// operator, with its own password and an operator signing key, as
// processes — the whole stream, and a window (export's two-pass read) —
// with no permission violation, and each verifies offline, in a directory
// with nothing but the bundle and the trust list, with no NATS settings.
func TestDeployExportAsOperator(t *testing.T) {
	d := startDeployment(t, nil)
	initAuditflow(t, d.url(roleAdmin))
	runner, operator := trusttest.NewSigner(t), trusttest.NewSigner(t)
	list, err := trust.NewList(
		trust.Key{Key: runner.PublicKey(), Name: "runner", Roles: []trust.Role{trust.RoleRunner}, Pipelines: []string{deployPipeline}},
		trust.Key{Key: operator.PublicKey(), Name: "exporter", Roles: []trust.Role{trust.RoleOperator}, Pipelines: []string{trust.AllPipelines}})
	if err != nil {
		t.Fatal(err)
	}
	keys := t.TempDir()
	listPath, keyPath := trusttest.WriteList(t, keys, list), trusttest.WriteKey(t, keys, operator)

	ctx := context.Background()
	_, rjs := d.connect(t, roleRunner)
	prod, err := producer.New(ctx, rjs, producer.Config{Signer: runner})
	if err != nil {
		t.Fatal(err)
	}
	published := 0
	var windowStart time.Time
	for i := range 4 {
		if i == 2 {
			time.Sleep(20 * time.Millisecond)
			windowStart = time.Now()
		}
		published += publishRun(t, prod, fmt.Sprintf("000%d-change", i))
	}

	out := t.TempDir()
	for _, tc := range []struct {
		name   string
		args   []string
		events int
	}{
		{"all.tar.gz", nil, published},
		{"window.tar.gz", []string{"--since", windowStart.UTC().Format(time.RFC3339Nano)}, 4}, // the last two changes
	} {
		path := filepath.Join(out, tc.name)
		cmd := exec.Command(bin.auditflow, append([]string{"export", "--out", path, "--trust", listPath, "--signing-key", keyPath}, tc.args...)...)
		cmd.Env = append(os.Environ(), "AUDITFLOW_NATS_URL="+d.url(roleOperator), "AUDITFLOW_LOG_LEVEL=debug")
		b, err := cmd.CombinedOutput()
		if err != nil || strings.Contains(strings.ToLower(string(b)), "permissions violation") {
			t.Fatalf("export %v as %s: %v\n%s", tc.args, roleOperator, err, b)
		}
		// The auditor's machine: the bundle and the trust list, nothing else.
		auditor := t.TempDir()
		for _, f := range []string{path, listPath} {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(auditor, filepath.Base(f)), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		cmd = exec.Command(bin.auditflow, "verify-bundle", tc.name, "--trust", "trust.yaml")
		cmd.Dir = auditor
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "AUDITFLOW_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		b, err = cmd.CombinedOutput()
		want := fmt.Sprintf("%d events of", tc.events)
		if err != nil || !strings.Contains(string(b), want) || !strings.Contains(string(b), "exporter") {
			t.Fatalf("verify-bundle %s: %v, want %q and the exporter named\n%s", tc.name, err, want, b)
		}
	}
}

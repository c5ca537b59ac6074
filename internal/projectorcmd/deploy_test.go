package projectorcmd_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"

	"github.com/auditflow/auditflow/internal/projectorcmd"
)

// TestComposeFile checks what can be checked of docker-compose.yml without
// a Docker engine: it parses, it has the services the deployment promises,
// every projector's command line is accepted by the real flag parser with
// the service's environment, and the NATS configuration is accepted by
// nats-server's own parser.
func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Image       string            `yaml:"image"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &compose); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nats1", "nats2", "nats3", "mongo", "dynamodb", "couchbase",
		"projector-sqlite", "projector-mongo", "projector-dynamodb", "projector-couchbase"} {
		if _, ok := compose.Services[name]; !ok {
			t.Errorf("service %s missing", name)
		}
	}
	projectors := 0
	for name, svc := range compose.Services {
		if len(svc.Command) == 0 || svc.Command[0] != "projector" {
			continue
		}
		projectors++
		t.Run(name, func(t *testing.T) {
			for k, v := range svc.Environment {
				t.Setenv(k, v)
			}
			if err := projectorcmd.CheckArgs(svc.Command[1:]); err != nil {
				t.Fatalf("%v: %v", svc.Command, err)
			}
		})
	}
	if projectors != 4 {
		t.Errorf("%d projector services, want one per store (4)", projectors)
	}
	for _, n := range []string{"nats1", "nats2", "nats3"} {
		if compose.Services[n].Environment["NATS_NAME"] != n {
			t.Errorf("%s: NATS_NAME = %q", n, compose.Services[n].Environment["NATS_NAME"])
		}
	}
	t.Setenv("NATS_NAME", "nats1")
	opts, err := server.ProcessConfigFile(filepath.Join("..", "..", "deploy", "nats", "nats.conf"))
	if err != nil {
		t.Fatalf("nats.conf: %v", err)
	}
	if !opts.JetStream || !opts.SyncAlways || opts.ServerName != "nats1" || len(opts.Routes) != 3 || opts.Cluster.Name != "auditflow" {
		t.Fatalf("nats.conf: jetstream %v sync-always %v name %q routes %d cluster %q",
			opts.JetStream, opts.SyncAlways, opts.ServerName, len(opts.Routes), opts.Cluster.Name)
	}
}

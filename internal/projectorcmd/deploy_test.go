package projectorcmd_test

import (
	"context"
	"crypto/tls"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"

	"github.com/auditflow/auditflow/internal/cli"
	"github.com/auditflow/auditflow/internal/projectorcmd"
	"github.com/auditflow/auditflow/stores/storetest"
	"github.com/auditflow/auditflow/trust"
)

// TestComposeFile checks what can be checked of docker-compose.yml without
// a Docker engine: it parses, it has the services the deployment promises,
// every projector's command line is accepted by the real flag parser with
// the service's environment, and the NATS configuration is accepted by
// nats-server's own parser. TestNATSConfig and TestComposeSecurity check
// the security of both; internal/faulttest/deploy_test.go runs a server
// from the NATS configuration and checks every role against it.
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
		"projector-sqlite", "projector-mongo", "projector-dynamodb", "projector-couchbase", "console", "siem"} {
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
	for _, v := range []string{"ROUTE", "ADMIN", "OPERATOR", "PROJECTOR", "CONSOLE", "SIEM", "RUNNER_EXAMPLE_SERVICE", "SYS"} {
		t.Setenv("AUDITFLOW_"+v+"_PASSWORD", "secret") // as deploy/secrets/nats.env has them (TestNATSConfig makes one)
	}
	for _, n := range []string{"1", "2", "3"} {
		t.Setenv("AUDITFLOW_ROUTE_"+n, "nats-route://route:secret@nats"+n+":6222")
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

// compose is what the tests read of docker-compose.yml.
type compose struct {
	Services map[string]struct {
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		EnvFile     []string          `yaml:"env_file"`
		Ports       []string          `yaml:"ports"`
		Volumes     []string          `yaml:"volumes"`
		DependsOn   map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
	} `yaml:"services"`
}

func readCompose(t *testing.T) compose {
	t.Helper()
	b, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// makeSecrets runs deploy/make-secrets.sh into a temporary directory, puts
// nats.env's variables in the environment, as compose's env_file does for
// the NATS nodes, and returns the directory.
func makeSecrets(t *testing.T) string {
	t.Helper()
	needOpenSSL(t)
	dir := t.TempDir()
	if out, err := exec.Command("sh", "../../deploy/make-secrets.sh", dir).CombinedOutput(); err != nil {
		t.Fatalf("make-secrets.sh: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "nats.env"))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok || v == "" {
			t.Fatalf("nats.env: line %q", line)
		}
		t.Setenv(k, v)
	}
	return dir
}

// TestNATSConfig checks deploy/nats with nats-server's parser: every role
// is a user with a password from make-secrets.sh and the permissions the
// README's Security section lists; nobody gets in without one; monitoring
// is not reachable from outside the container; a missing password is an
// error, not an empty password; and the TLS files load.
func TestNATSConfig(t *testing.T) {
	makeSecrets(t)
	t.Setenv("NATS_NAME", "nats1")
	conf := filepath.Join("..", "..", "deploy", "nats", "nats.conf")
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats.conf: %v", err)
	}
	if opts.NoAuthUser != "" || opts.HTTPHost != "127.0.0.1" || opts.Cluster.Username != "route" || opts.Cluster.Password == "" {
		t.Fatalf("no-auth user %q, monitoring on %q, route user %q", opts.NoAuthUser, opts.HTTPHost, opts.Cluster.Username)
	}
	users := map[string]*server.User{}
	for _, u := range opts.Users {
		users[u.Username] = u
		if u.Password == "" {
			t.Errorf("user %s has no password", u.Username)
		}
	}
	destroy := []string{"$JS.API.STREAM.DELETE.>", "$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>", "$JS.API.STREAM.UPDATE.>"}
	for _, name := range []string{"admin", "operator", "projector", "runner-example-service", "console", "siem"} {
		u := users[name]
		if u == nil || u.Account == nil || u.Account.Name != "AUDITFLOW" || u.Permissions == nil || u.Permissions.Publish == nil {
			t.Fatalf("user %s: %+v", name, u)
		}
		for _, d := range destroy {
			if !slices.Contains(u.Permissions.Publish.Deny, d) {
				t.Errorf("user %s is not denied %s", name, d)
			}
		}
		sub := []string{"_INBOX." + name + ".>"} // its own replies only
		if name == "console" {
			sub = append(sub, "audit.writes.>") // live updates
		}
		if !slices.Equal(u.Permissions.Subscribe.Allow, sub) {
			t.Errorf("user %s may subscribe to %v", name, u.Permissions.Subscribe.Allow)
		}
	}
	runner := users["runner-example-service"].Permissions.Publish.Allow
	for _, s := range runner {
		if strings.HasPrefix(s, "audit.exec.") && s != "audit.exec.example-service.>" || strings.HasPrefix(s, "$KV.") && s != "$KV.auditflow_locks.example-service" {
			t.Errorf("the runner of example-service may publish to %s", s)
		}
	}
	if !slices.Contains(users["projector"].Permissions.Publish.Deny, "audit.exec.>") {
		t.Error("the projector may write history")
	}
	if !slices.Contains(users["operator"].Permissions.Publish.Allow, "audit.exec.>") {
		t.Error("the operator may not record decisions")
	}
	if !slices.Contains(users["operator"].Permissions.Publish.Allow, "audit.verify.>") {
		t.Error("the operator may not record verify results (stream AUDIT_VERIFY)")
	}
	for _, s := range users["console"].Permissions.Publish.Allow {
		// The console only reads: no subject of its own, only JetStream API requests.
		if !strings.HasPrefix(s, "$JS.API.") {
			t.Errorf("the console may publish to %s", s)
		}
	}
	for _, d := range []string{"audit.exec.>", "$KV.>", "$JS.API.CONSUMER.DELETE.AUDIT.>", "$JS.API.CONSUMER.CREATE.AUDIT.>"} {
		if !slices.Contains(users["console"].Permissions.Publish.Deny, d) {
			t.Errorf("the console is not denied %s", d)
		}
	}

	// The SIEM feed reads: JetStream API requests, and acknowledgements of
	// its own durable consumer's deliveries only (a projector's would
	// skip an event).
	for _, s := range users["siem"].Permissions.Publish.Allow {
		if !strings.HasPrefix(s, "$JS.API.") && s != "$JS.ACK.AUDIT.siem.>" {
			t.Errorf("the siem role may publish to %s", s)
		}
	}
	for _, d := range []string{"$JS.API.CONSUMER.CREATE.AUDIT.projector-sqlite.>", "$JS.API.CONSUMER.MSG.NEXT.AUDIT.projector-sqlite",
		"$JS.API.CONSUMER.DELETE.AUDIT.projector-sqlite", "$JS.API.CONSUMER.CREATE.AUDIT", "$JS.API.CONSUMER.DURABLE.CREATE.AUDIT.>"} {
		if !slices.Contains(users["siem"].Permissions.Publish.Deny, d) {
			t.Errorf("the siem role is not denied %s", d)
		}
	}

	t.Run("a missing password is an error", func(t *testing.T) {
		t.Setenv("AUDITFLOW_PROJECTOR_PASSWORD", "")
		os.Unsetenv("AUDITFLOW_PROJECTOR_PASSWORD")
		if _, err := server.ProcessConfigFile(conf); err == nil || !strings.Contains(err.Error(), "AUDITFLOW_PROJECTOR_PASSWORD") {
			t.Fatalf("nats.conf without a projector password: %v", err)
		}
	})

	t.Run("tls", func(t *testing.T) {
		needOpenSSL(t)
		certs := t.TempDir()
		if out, err := exec.Command("sh", "../../deploy/tls/make-certs.sh", certs).CombinedOutput(); err != nil {
			t.Fatalf("make-certs.sh: %v\n%s", err, out)
		}
		t.Setenv("AUDITFLOW_TLS_SERVER_CERT", filepath.Join(certs, "server.pem"))
		t.Setenv("AUDITFLOW_TLS_SERVER_KEY", filepath.Join(certs, "server-key.pem"))
		t.Setenv("AUDITFLOW_TLS_CA", filepath.Join(certs, "ca.pem"))
		dir := t.TempDir()
		for _, f := range []string{"nats.conf", "accounts.conf", "tls.conf", "cluster-tls.conf"} {
			b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "nats", f))
			if err != nil {
				t.Fatal(err)
			}
			on := strings.NewReplacer("# include ./tls.conf", "include ./tls.conf", "# include ./cluster-tls.conf", "include ./cluster-tls.conf").Replace(string(b))
			if f == "nats.conf" && strings.Count(on, "\ninclude ./tls.conf")+strings.Count(on, "  include ./cluster-tls.conf") != 2 {
				t.Fatal("nats.conf lacks the commented-out includes of tls.conf and cluster-tls.conf")
			}
			if err := os.WriteFile(filepath.Join(dir, f), []byte(on), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		opts, err := server.ProcessConfigFile(filepath.Join(dir, "nats.conf"))
		if err != nil {
			t.Fatalf("nats.conf with TLS: %v", err)
		}
		if opts.TLSConfig == nil || opts.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert ||
			opts.Cluster.TLSConfig == nil || opts.Cluster.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
			t.Fatalf("TLS for clients %v, for routes %v, with client certificates required", opts.TLSConfig != nil, opts.Cluster.TLSConfig != nil)
		}
	})
}

// TestComposeSecurity: every container gets only its own role's secrets
// file; the NATS monitoring port is never published and every published
// port is on 127.0.0.1; the stream and bucket come from the init service,
// which the projectors, the runner, the console and the SIEM feed wait
// for; the console mounts the SQLite projector's store read-only; the SIEM
// feed follows the stream as the siem user, with the trust list.
func TestComposeSecurity(t *testing.T) {
	c := readCompose(t)
	secrets := makeSecrets(t)
	role := map[string]string{"init": "admin", "auditflow": "operator", "runner": "runner-example-service", "console": "console",
		"siem": "siem", "nats1": "nats", "nats2": "nats", "nats3": "nats"}
	for name, svc := range c.Services {
		want, ok := role[name]
		if len(svc.Command) > 0 && svc.Command[0] == "projector" {
			want, ok = "projector", true
		}
		if ok {
			if f := "./deploy/secrets/" + want + ".env"; !slices.Equal(svc.EnvFile, []string{f}) {
				t.Errorf("%s: env_file %v, want [%s]", name, svc.EnvFile, f)
			}
			if _, err := os.Stat(filepath.Join(secrets, want+".env")); err != nil {
				t.Errorf("%s: make-secrets.sh does not make its %s.env", name, want)
			}
			if want != "admin" && want != "nats" && svc.DependsOn["init"].Condition != "service_completed_successfully" {
				t.Errorf("%s does not wait for init: %+v", name, svc.DependsOn)
			}
		}
		for _, p := range svc.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") || strings.Contains(p, "8222") {
				t.Errorf("%s publishes %s", name, p)
			}
		}
		for k, v := range svc.Environment {
			if strings.HasPrefix(k, "AUDITFLOW_NATS") && k != "AUDITFLOW_NATS_URL_FILE" || strings.Contains(v, "@nats") {
				t.Errorf("%s: NATS settings in the compose file, not its secrets file: %s", name, k)
			}
		}
	}
	// Signed events are judged everywhere: make-secrets.sh makes the keys
	// and the trust list, every projector, the runner and the operator
	// CLI mount that list, and it names every signer.
	list, err := trust.LoadList(filepath.Join(secrets, "trust.yaml"))
	if err != nil {
		t.Fatalf("make-secrets.sh's trust.yaml: %v", err)
	}
	for _, k := range []struct{ file, name string }{{"operator.nk", "operator"}, {"runner-example-service.nk", "runner-example-service"}} {
		s, err := trust.LoadSigner(filepath.Join(secrets, k.file))
		if err != nil {
			t.Fatalf("make-secrets.sh's %s: %v", k.file, err)
		}
		if got, ok := list.Lookup(s.PublicKey()); !ok || got.Name != k.name {
			t.Errorf("trust.yaml does not name %s's key as %s: %+v", k.file, k.name, got)
		}
	}
	for name, svc := range c.Services {
		if len(svc.Command) == 0 || (svc.Command[0] != "projector" && svc.Command[0] != "runner" && name != "auditflow" && name != "siem") {
			continue
		}
		if svc.Environment["AUDITFLOW_TRUST"] != "/etc/auditflow/trust.yaml" ||
			!slices.Contains(svc.Volumes, "./deploy/secrets/trust.yaml:/etc/auditflow/trust.yaml:ro") {
			t.Errorf("%s runs without the trust list: environment %v, volumes %v", name, svc.Environment, svc.Volumes)
		}
	}
	initCmd := c.Services["init"].Command
	if len(initCmd) < 2 || initCmd[0] != "auditflow" || initCmd[1] != "init" {
		t.Fatalf("init runs %v", initCmd)
	}
	var out, errOut strings.Builder
	if code := cli.Main(context.Background(), append(initCmd[1:], "--help"), &out, &errOut); code != cli.ExitOK {
		t.Fatalf("%v: exit %d: %s", initCmd, code, errOut.String())
	}

	// The SIEM feed follows the stream from its durable consumer.
	feed := c.Services["siem"].Command
	if len(feed) < 3 || feed[0] != "auditflow" || feed[1] != "feed" || !slices.Contains(feed, "--follow") {
		t.Fatalf("siem runs %v, want auditflow feed --follow", feed)
	}
	if code := cli.Main(context.Background(), append(feed[1:], "--help"), &out, &errOut); code != cli.ExitOK {
		t.Fatalf("%v: exit %d: %s", feed, code, errOut.String())
	}

	// The console reads the store projector-sqlite writes, read-only.
	con := c.Services["console"]
	if len(con.Command) < 2 || con.Command[0] != "auditflow" || !slices.Contains(con.Command, "console") {
		t.Fatalf("console runs %v", con.Command)
	}
	if code := cli.Main(context.Background(), append(con.Command[1:], "--help"), &out, &errOut); code != cli.ExitOK {
		t.Fatalf("%v: exit %d: %s", con.Command, code, errOut.String())
	}
	sqlitePath := func(cmd []string) string {
		i := slices.Index(cmd, "--sqlite-path")
		if i < 0 || i+1 == len(cmd) {
			return ""
		}
		return cmd[i+1]
	}
	store, ok := strings.CutPrefix(sqlitePath(con.Command), "/var/lib/auditflow/store/")
	if !ok || "/var/lib/auditflow/"+store != sqlitePath(c.Services["projector-sqlite"].Command) {
		t.Errorf("console reads %s, projector-sqlite writes %s", sqlitePath(con.Command), sqlitePath(c.Services["projector-sqlite"].Command))
	}
	if !slices.Contains(con.Volumes, "sqlite:/var/lib/auditflow/store:ro") || !slices.Contains(c.Services["projector-sqlite"].Volumes, "sqlite:/var/lib/auditflow") {
		t.Errorf("console volumes %v, projector-sqlite's %v: want the projector's volume, read-only", con.Volumes, c.Services["projector-sqlite"].Volumes)
	}
	if con.DependsOn["projector-sqlite"].Condition != "service_healthy" {
		t.Errorf("console does not wait for projector-sqlite to have the store open: %+v", con.DependsOn)
	}
}

// needOpenSSL skips a test where openssl, which deploy's scripts use, is not
// installed (apt-get install openssl), or fails it under
// AUDITFLOW_REQUIRE_INTEGRATION=1, as CI runs.
func needOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err == nil {
		return
	}
	msg := "openssl is not installed (apt-get install openssl): deploy/make-secrets.sh and deploy/tls/make-certs.sh use it"
	if os.Getenv(storetest.RequireIntegrationEnv) == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

package projectorcmd_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
)

// TestComposeConfig loads docker-compose.yml as `docker compose config`
// does — compose-go, the library Docker Compose uses, with every profile
// active — so a file Compose would refuse fails here: every depends_on
// names a service, every condition is one Compose knows. It also checks
// that the deployment fails loudly: every long-running service has a
// health check, a service another waits on as healthy has one, a
// service another waits on to complete is a one-shot, and no one-shot
// hides a failed step behind `|| true`.
func TestComposeConfig(t *testing.T) {
	// As the README has it: make-secrets.sh first (the env files Compose
	// reads), then Compose, here on a copy of the file.
	needOpenSSL(t)
	dir := t.TempDir()
	b, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "docker-compose.yml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sh", "../../deploy/make-secrets.sh", filepath.Join(dir, "deploy", "secrets")).CombinedOutput(); err != nil {
		t.Fatalf("make-secrets.sh: %v\n%s", err, out)
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(dir, "docker-compose.yml")},
		cli.WithName("auditflow"), cli.WithProfiles([]string{"demo", "tools"}), cli.WithWorkingDirectory(dir))
	if err != nil {
		t.Fatal(err)
	}
	p, err := cli.ProjectFromOptions(context.Background(), opts)
	if err != nil {
		t.Fatalf("docker-compose.yml does not load as Compose loads it: %v", err)
	}
	if len(p.DisabledServices) != 0 {
		t.Errorf("services left out with every profile active: %v", slices.Collect(func(yield func(string) bool) {
			for n := range p.DisabledServices {
				if !yield(n) {
					return
				}
			}
		}))
	}
	oneShot := func(name string) bool { return p.Services[name].Restart == "no" }
	for name, svc := range p.Services {
		hc := svc.HealthCheck
		healthy := hc != nil && !hc.Disable && len(hc.Test) > 0
		if !oneShot(name) && !healthy {
			t.Errorf("%s runs for good (restart %q) without a health check", name, svc.Restart)
		}
		for dep, d := range svc.DependsOn {
			target, ok := p.Services[dep]
			switch {
			case !ok:
				t.Errorf("%s depends on %s, which does not exist", name, dep)
			case d.Condition == "service_healthy" && (target.HealthCheck == nil || target.HealthCheck.Disable):
				t.Errorf("%s waits for %s to be healthy, which has no health check", name, dep)
			case d.Condition == "service_completed_successfully" && !oneShot(dep):
				t.Errorf("%s waits for %s to complete, which is not a one-shot (restart %q)", name, dep, target.Restart)
			}
		}
		if oneShot(name) {
			cmd := strings.Join(append(slices.Clone([]string(svc.Entrypoint)), svc.Command...), " ")
			if strings.Contains(cmd, "|| true") {
				t.Errorf("%s hides a failed step behind || true: a failure must fail the container\n%s", name, cmd)
			}
		}
	}
}

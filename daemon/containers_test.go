package daemon_test

import (
	"strings"
	"testing"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/internal/nstest"
)

// TestDockerCLISeesSandboxes: docker ps, docker inspect and docker port show pier's
// sandboxes as (read-only) containers; container commands pier does not serve fail
// with a message that says why (issue 14 item 9).
func TestDockerCLISeesSandboxes(t *testing.T) {
	t.Parallel()
	nstest.Require(t, "docker")
	d := newPierd(t)
	d.start()
	d.mustDocker("network", "create", "--subnet", "10.31.0.0/24", "app")
	web := d.sandbox(types.SandboxCreateRequest{Name: "web", Networks: []types.SandboxNetwork{{Network: "app", Aliases: []string{"www"}}},
		Ports: []string{"18080:80/tcp"}})
	d.sandbox(types.SandboxCreateRequest{Name: "other"})
	if got := d.mustDocker("ps", "--format", "{{.Names}} {{.Image}} {{.State}}"); got != "other pier-sandbox running\nweb pier-sandbox running" &&
		got != "web pier-sandbox running\nother pier-sandbox running" {
		t.Fatalf("docker ps:\n%s", got)
	}
	if got := d.mustDocker("ps", "--filter", "network=app", "--format", "{{.Names}} {{.Networks}}"); got != "web app" {
		t.Fatalf("docker ps --filter network=app:\n%s", got)
	}
	addr := ""
	for _, ep := range web.Endpoints {
		if ep.Network == "app" {
			addr, _, _ = strings.Cut(ep.IPv4Address, "/")
		}
	}
	if got := d.mustDocker("inspect", "--format", "{{.Id}} {{.State.Running}} {{.HostConfig.NetworkMode}} {{.NetworkSettings.Networks.app.IPAddress}} {{.NetworkSettings.Networks.app.Aliases}}", "web"); got != web.ID+" true app "+addr+" [www]" {
		t.Fatalf("docker inspect web = %q, want id, running, app, %s, [www]", got, addr)
	}
	if got := d.mustDocker("inspect", "--format", "{{.Name}}", web.ID[:10]); got != "/web" {
		t.Fatalf("docker inspect by ID prefix = %q", got)
	}
	if got := d.mustDocker("port", "web"); !strings.Contains(got, "80/tcp -> 0.0.0.0:18080") {
		t.Fatalf("docker port web:\n%s", got)
	}
	if _, err := d.docker("inspect", "nosuch"); err == nil || !strings.Contains(err.Error(), "No such") {
		t.Fatalf("docker inspect of a missing sandbox: %v", err)
	}
	if _, err := d.docker("rm", "-f", "web"); err == nil || !strings.Contains(err.Error(), "networks, not containers") {
		t.Fatalf("docker rm: %v, want pier's not-implemented message", err)
	}
}

// TestDockerCLIAnswersLikeDocker: what the docker CLI prints for pier's answers to
// swarm commands outside a swarm, subnets with host bits and too-small subnets
// (issue 14 items 1, 6, 8), with a positive control.
func TestDockerCLIAnswersLikeDocker(t *testing.T) {
	t.Parallel()
	nstest.Require(t, "docker")
	d := newPierd(t)
	d.start()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"swarm", "leave"}, "This node is not part of a swarm"},
		{[]string{"node", "ls"}, "This node is not part of a swarm"},
		{[]string{"service", "ls"}, "This node is not part of a swarm"},
		{[]string{"network", "create", "--subnet", "10.9.0.1/24", "hb"}, "invalid subnet 10.9.0.1/24: it should be 10.9.0.0/24"},
		{[]string{"network", "create", "--subnet", "10.9.9.9/32", "tiny"}, "too small for a network"},
	} {
		if out, err := d.docker(tc.args...); err == nil || !strings.Contains(err.Error()+out, tc.want) {
			t.Errorf("docker %s: %v %s, want %q", strings.Join(tc.args, " "), err, out, tc.want)
		}
	}
	d.mustDocker("network", "create", "--subnet", "10.9.0.0/24", "hb") // the positive control
	if got := d.mustDocker("network", "ls", "--filter", "name=hb", "--format", "{{.Name}}"); got != "hb" {
		t.Fatalf("network ls: %q", got)
	}
}

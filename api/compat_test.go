package api

import (
	"strings"
	"testing"

	"github.com/moby/moby/api/types/container"

	"github.com/piernet/pier/api/types"
)

func TestSwarmAndEngineRoutes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tc := range []struct {
		method, path string
		status       int
		msg          string
	}{
		{"POST", "/v1.41/swarm/leave", 503, "This node is not part of a swarm"},
		{"GET", "/swarm", 503, "This node is not part of a swarm"},
		{"GET", "/v1.50/nodes", 503, "This node is not part of a swarm"},
		{"GET", "/services/abc", 503, "This node is not part of a swarm"},
		{"GET", "/tasks", 503, "This node is not part of a swarm"},
		{"GET", "/secrets", 503, "This node is not part of a swarm"},
		{"GET", "/configs", 503, "This node is not part of a swarm"},
		{"POST", "/swarm/init", 501, "pier does not implement swarm mode"},
		{"POST", "/containers/create", 501, "pier manages networks, not containers"},
		{"POST", "/v1.41/containers/abc/start", 501, "pier manages networks, not containers"},
		{"GET", "/images/json", 501, "pier manages networks, not containers"},
		{"POST", "/build", 501, "pier manages networks, not containers"},
		{"GET", "/containers/nope/json", 404, "No such container: nope"},
	} {
		if r := e.do(tc.method, tc.path, nil); r.status != tc.status || !strings.Contains(r.message(), tc.msg) {
			t.Errorf("%s %s = %d %q, want %d %q", tc.method, tc.path, r.status, r.message(), tc.status, tc.msg)
		}
	}
}

func TestNetworkScopeAndCodes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must(201, "POST", "/networks/create", `{"Name":"app","IPAM":{"Config":[{"Subnet":"10.9.0.0/24"}]}}`)
	e.must(200, "GET", "/networks/app?scope=local", nil)
	for _, sc := range []string{"swarm", "global"} {
		if r := e.do("GET", "/networks/app?scope="+sc, nil); r.status != 404 || r.message() != "network app not found" {
			t.Errorf("scope=%s: %d %s", sc, r.status, r.body)
		}
	}
	before := e.state()
	if r := e.do("POST", "/networks/create", `{"Name":"x","IPAM":{"Config":[{"Subnet":"10.9.0.0/16"}]}}`); r.status != 403 || !strings.Contains(r.message(), "overlaps") {
		t.Errorf("overlap: %d %s", r.status, r.body)
	}
	e.must(201, "POST", "/pier/v1/sandboxes", types.SandboxCreateRequest{Name: "web",
		Networks: []types.SandboxNetwork{{Network: "app", IPv4Address: "10.9.0.9"}}})
	e.must(201, "POST", "/pier/v1/sandboxes", types.SandboxCreateRequest{Name: "db"})
	before = e.state()
	if r := e.do("POST", "/networks/app/connect", `{"Container":"db","EndpointConfig":{"IPAMConfig":{"IPv4Address":"10.9.0.9"}}}`); r.status != 403 || !strings.Contains(r.message(), "already in use") {
		t.Errorf("address in use: %d %s", r.status, r.body)
	}
	if r := e.do("POST", "/networks/host/connect", `{"Container":"db"}`); r.status != 400 {
		t.Errorf("connect to host: %d %s", r.status, r.body)
	}
	if after := e.state(); after != before {
		t.Errorf("failed requests changed state:\n%s\nwant\n%s", after, before)
	}

	var list []container.Summary
	e.must(200, "GET", `/containers/json?filters={"network":["app"],"name":["web"]}`, nil).decode(t, &list)
	if len(list) != 1 || list[0].Names[0] != "/web" || list[0].State != "running" {
		t.Fatalf("list = %+v", list)
	}
	nw := list[0].NetworkSettings.Networks["app"]
	if nw == nil || nw.IPAddress.String() != "10.9.0.9" || nw.IPPrefixLen != 24 || nw.Gateway.String() != "10.9.0.1" {
		t.Errorf("list networks = %+v", list[0].NetworkSettings.Networks)
	}
	var ins container.InspectResponse
	e.must(200, "GET", "/containers/"+list[0].ID[:8]+"/json", nil).decode(t, &ins)
	if ins.Name != "/web" || ins.HostConfig.NetworkMode != "app" || ins.NetworkSettings.Networks["app"].EndpointID == "" {
		t.Errorf("inspect = %+v", ins)
	}
	e.must(200, "GET", `/containers/json?filters={"network":["bridge"]}`, nil).decode(t, &list)
	if len(list) != 1 || list[0].Names[0] != "/db" || list[0].HostConfig.NetworkMode != "bridge" {
		t.Errorf("network=bridge listed %+v", list)
	}
}

package api

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/internal/nstest"
)

func TestSandboxCreate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must(201, "POST", "/networks/create", `{"Name":"app","IPAM":{"Config":[{"Subnet":"10.9.0.0/24"}]}}`)
	var web types.SandboxInfo
	e.must(201, "POST", "/pier/v1/sandboxes", types.SandboxCreateRequest{Name: "web", Hostname: "webhost",
		Networks: []types.SandboxNetwork{{Network: "app", IPv4Address: "10.9.0.5", Aliases: []string{"www"}}, {Network: "bridge"}},
		DNS:      []string{"1.2.3.4"}, DNSSearch: []string{"example.test"}, DNSOptions: []string{"ndots:2"},
		ExtraHosts: []string{"db:10.0.0.7", "v6host:fd00::7"}}).decode(t, &web)
	want := types.SandboxInfo{Name: "web", Hostname: "webhost", Endpoints: []types.SandboxEndpoint{
		{Network: "app", IfName: "eth0", IPv4Address: "10.9.0.5/24", Gateway: "10.9.0.1", Aliases: []string{"www"}},
		{Network: "bridge", IfName: "eth1", IPv4Address: web.Endpoints[1].IPv4Address, Gateway: web.Endpoints[1].Gateway, Aliases: []string{}},
	}, Ports: []types.PortBinding{}}
	opts := cmp.Options{cmpopts.IgnoreFields(types.SandboxInfo{}, "ID", "Key", "Dir", "Created"),
		cmpopts.IgnoreFields(types.SandboxEndpoint{}, "NetworkID", "EndpointID", "MacAddress")}
	if diff := cmp.Diff(want, web, opts); diff != "" {
		t.Errorf("sandbox (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(web.Endpoints[1].IPv4Address, "10.128.") || web.Endpoints[0].MacAddress == "" {
		t.Errorf("bridge endpoint %+v: want an address from the default pool and a MAC", web.Endpoints[1])
	}
	assertFile(t, filepath.Join(web.Dir, "hosts"), "10.0.0.7\tdb", "fd00::7\tv6host", "10.9.0.5\twebhost web")
	// On a user-defined network the embedded DNS answers; --dns becomes its upstream.
	assertFile(t, filepath.Join(web.Dir, "resolv.conf"), "nameserver 127.0.0.11", "search example.test", "options ndots:2")

	// The sandbox is a real network stack: a second one reaches it on the network.
	var db types.SandboxInfo
	e.must(201, "POST", "/pier/v1/sandboxes", `{"Name":"db","Networks":[{"Network":"app"}]}`).decode(t, &db)
	if err := nstest.PingOnce(db.Key, netip.MustParseAddr("10.9.0.5")); err != nil {
		t.Fatalf("ping from db to web: %v", err)
	}
	var list []types.SandboxInfo
	e.must(200, "GET", "/pier/v1/sandboxes", nil).decode(t, &list)
	if len(list) != 2 || list[0].Name != "db" || list[1].Name != "web" || len(list[1].Endpoints) != 2 {
		t.Errorf("list = %+v", list)
	}
	var byID types.SandboxInfo
	e.must(200, "GET", "/v1.41/pier/v1/sandboxes/"+web.ID[:10], nil).decode(t, &byID)
	if byID.Processes == nil || *byID.Processes != 0 {
		t.Errorf("inspect Processes = %v, want 0", byID.Processes)
	}
	byID.Processes = nil // inspect only
	if diff := cmp.Diff(web, byID); diff != "" {
		t.Errorf("inspect by ID prefix (-create +inspect):\n%s", diff)
	}
}

func assertFile(t *testing.T, path string, lines ...string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		if !strings.Contains(string(data), l) {
			t.Errorf("%s lacks %q:\n%s", filepath.Base(path), l, data)
		}
	}
}

func TestSandboxDefaultNetworks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tc := range []struct {
		body      string
		network   string
		ifName    string
		hostNet   bool
		hasAddr   bool
		sameKeyAs string
	}{
		{`{"Name":"dflt"}`, "bridge", "eth0", false, true, ""},
		{`{"Name":"hostly","Networks":[{"Network":"host"}]}`, "host", "", true, false, e.hostPath},
		{`{"Name":"hostflag","HostNetwork":true}`, "host", "", true, false, e.hostPath},
		{`{"Name":"isolated","Networks":[{"Network":"none"}]}`, "none", "", false, false, ""},
	} {
		var sb types.SandboxInfo
		e.must(201, "POST", "/pier/v1/sandboxes", tc.body).decode(t, &sb)
		if len(sb.Endpoints) != 1 {
			t.Errorf("%s: endpoints %+v, want one on %s", tc.body, sb.Endpoints, tc.network)
			continue
		}
		ep := sb.Endpoints[0]
		if ep.Network != tc.network || ep.IfName != tc.ifName || sb.HostNetwork != tc.hostNet || (ep.IPv4Address != "") != tc.hasAddr {
			t.Errorf("%s: got %+v", tc.body, sb)
		}
		if tc.sameKeyAs != "" && sb.Key != tc.sameKeyAs {
			t.Errorf("%s: Key %s, want the host namespace %s", tc.body, sb.Key, tc.sameKeyAs)
		}
	}
}

func TestSandboxCreateFailsCleanly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must(201, "POST", "/networks/create", `{"Name":"app","IPAM":{"Config":[{"Subnet":"10.9.0.0/24"}]}}`)
	e.must(201, "POST", "/pier/v1/sandboxes", `{"Name":"web","Networks":[{"Network":"app","IPv4Address":"10.9.0.5"}]}`)
	before := e.state()
	pins, _ := filepath.Glob(filepath.Join(e.execRoot, "netns", "*"))
	for _, tc := range []struct {
		name, body string
		status     int
		msg        string
	}{
		{"unknown network", `{"Name":"x","Networks":[{"Network":"app"},{"Network":"nope"}]}`, 404, "network nope not found"},
		{"address taken", `{"Name":"x","Networks":[{"Network":"bridge"},{"Network":"app","IPv4Address":"10.9.0.5"}]}`, 403, "connecting to network"},
		{"same network twice", `{"Name":"x","Networks":[{"Network":"app"},{"Network":"app"}]}`, 403, "endpoint with name x already exists in network app"},
		{"host and bridge", `{"Name":"x","Networks":[{"Network":"bridge"},{"Network":"host"}]}`, 400, "host network"},
		{"duplicate name", `{"Name":"web"}`, 409, `sandbox name "web" is already in use`},
		{"no name", `{"Networks":[{"Network":"app"}]}`, 400, "a sandbox needs a name"},
		{"bad DNS", `{"Name":"x","DNS":["1.2.3"]}`, 400, `invalid IP address "1.2.3"`},
		{"bad extra host", `{"Name":"x","ExtraHosts":["justaname"]}`, 400, `invalid extra host "justaname"`},
		{"bad static IPv4", `{"Name":"x","Networks":[{"Network":"app","IPv4Address":"fd00::1"}]}`, 400, "is not an IPv4 address"},
		{"empty network", `{"Name":"x","Networks":[{"Network":""}]}`, 400, "a network entry needs a Network"},
		{"malformed", `{"Name":`, 400, "invalid JSON body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("POST", "/pier/v1/sandboxes", tc.body)
			if r.status != tc.status || !strings.Contains(r.message(), tc.msg) {
				t.Errorf("status %d %q, want %d containing %q", r.status, r.message(), tc.status, tc.msg)
			}
			if after := e.state(); after != before {
				t.Errorf("state changed:\n%s\nwant\n%s", after, before)
			}
			if now, _ := filepath.Glob(filepath.Join(e.execRoot, "netns", "*")); len(now) != len(pins) {
				t.Errorf("namespaces %v, want %v", now, pins)
			}
		})
	}
}

func TestSandboxDelete(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var sb types.SandboxInfo
	e.must(201, "POST", "/pier/v1/sandboxes", `{"Name":"web"}`).decode(t, &sb)
	for _, tc := range []struct {
		path   string
		status int
		msg    string
	}{
		{"/pier/v1/sandboxes/web", 409, "sandbox web is connected to 1 network(s): disconnect first or force"},
		{"/pier/v1/sandboxes/web?force=maybe", 400, `invalid force="maybe"`},
		{"/pier/v1/sandboxes/ghost?force=true", 404, "sandbox ghost not found"},
		{"/pier/v1/sandboxes/web?force=true", 204, ""},
		{"/pier/v1/sandboxes/web?force=true", 404, "sandbox web not found"},
	} {
		r := e.do("DELETE", tc.path, nil)
		if r.status != tc.status || !strings.Contains(r.message(), tc.msg) {
			t.Errorf("DELETE %s: %d %q, want %d %q", tc.path, r.status, r.message(), tc.status, tc.msg)
		}
	}
	if _, err := os.Stat(sb.Key); !os.IsNotExist(err) {
		t.Errorf("namespace pin %s still there after delete: %v", sb.Key, err)
	}
}

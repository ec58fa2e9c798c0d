package api

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/moby/moby/api/types/network"

	"github.com/piernet/pier/api/types"
)

func TestPing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tc := range []struct {
		method, path string
		status       int
		body         string
	}{
		{"GET", "/_ping", 200, "OK"},
		{"HEAD", "/_ping", 200, ""},
		{"GET", "/v1.41/_ping", 200, "OK"},
		{"GET", "/v1.50/_ping", 200, "OK"},
		{"GET", "/v1.12/_ping", 400, `{"message":"client version 1.12 is too old. Minimum supported API version is 1.24, please upgrade your client to a newer version"}`},
		{"GET", "/v1.99/_ping", 400, `{"message":"client version 1.99 is too new. Maximum supported API version is 1.50"}`},
		{"GET", "/nope", 404, `{"message":"page not found"}`},
	} {
		r := e.do(tc.method, tc.path, nil)
		if r.status != tc.status || strings.TrimSpace(string(r.body)) != tc.body {
			t.Errorf("%s %s = %d %q, want %d %q", tc.method, tc.path, r.status, r.body, tc.status, tc.body)
		}
		if tc.status == 200 && (r.header.Get("Api-Version") != APIVersion || r.header.Get("Ostype") != "linux") {
			t.Errorf("%s %s: headers %v lack Api-Version/Ostype", tc.method, tc.path, r.header)
		}
	}
}

func TestNetworkCreateInspect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	created := e.must(201, "POST", "/v1.41/networks/create", `{"Name":"app","CheckDuplicate":true,
		"Driver":"bridge","EnableIPv6":null,"Internal":true,"Labels":{"team":"web"},
		"Options":{"com.docker.network.bridge.name":"br-app"},
		"IPAM":{"Driver":"default","Options":{},"Config":[{"Subnet":"10.7.0.0/16","IPRange":"10.7.1.0/24",
		"Gateway":"10.7.0.254","AuxiliaryAddresses":{"router":"10.7.0.253"}}]},"SomeFutureField":1}`)
	var cr network.CreateResponse
	created.decode(t, &cr)
	if len(cr.ID) != 64 || !strings.Contains(string(created.body), `"Warning":""`) {
		t.Fatalf("create reply %s", created.body)
	}
	e.must(201, "POST", "/pier/v1/sandboxes", types.SandboxCreateRequest{Name: "web",
		Networks: []types.SandboxNetwork{{Network: "app", IPv4Address: "10.7.1.9"}}})

	var got network.Inspect
	e.must(200, "GET", "/networks/app?verbose=true&scope=local", nil).decode(t, &got)
	sb := e.must(200, "GET", "/pier/v1/sandboxes/web", nil)
	var info types.SandboxInfo
	sb.decode(t, &info)
	want := network.Inspect{
		Network: network.Network{Name: "app", ID: cr.ID, Scope: "local", Driver: "bridge", EnableIPv4: true,
			Internal: true, Labels: map[string]string{"team": "web"},
			Options: map[string]string{"com.docker.network.bridge.name": "br-app"},
			IPAM: network.IPAM{Driver: "default", Options: map[string]string{}, Config: []network.IPAMConfig{{
				Subnet: netip.MustParsePrefix("10.7.0.0/16"), IPRange: netip.MustParsePrefix("10.7.1.0/24"),
				Gateway: netip.MustParseAddr("10.7.0.254"), AuxAddress: map[string]netip.Addr{"router": netip.MustParseAddr("10.7.0.253")}}}}},
		Containers: map[string]network.EndpointResource{info.ID: {Name: "web", EndpointID: info.Endpoints[0].EndpointID,
			MacAddress: mustMAC("02:42:0a:07:01:09"), IPv4Address: netip.MustParsePrefix("10.7.1.9/16")}}, // Docker's MAC: 02:42 + the IPv4 address
	}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(network.Network{}, "Created"),
		cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})); diff != "" {
		t.Errorf("inspect (-want +got):\n%s", diff)
	}
	if got.Created.IsZero() {
		t.Error("Created is zero")
	}
}

func TestNetworkBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must(201, "POST", "/networks/create", `{"Name":"app"}`)
	e.must(201, "POST", "/pier/v1/sandboxes", `{"Name":"web","Networks":[{"Network":"app"}]}`)
	e.must(201, "POST", "/pier/v1/sandboxes", `{"Name":"lonely","Networks":[{"Network":"none"}]}`)
	e.must(201, "POST", "/pier/v1/sandboxes", `{"Name":"free"}`)
	e.must(200, "POST", "/networks/bridge/disconnect", `{"Container":"free"}`)
	var web types.SandboxInfo
	e.must(200, "GET", "/pier/v1/sandboxes/web", nil).decode(t, &web)
	webIP := strings.Split(web.Endpoints[0].IPv4Address, "/")[0]
	before := e.state()
	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		msg                      string
	}{
		{"malformed JSON", "POST", "/networks/create", `{"Name":"x",`, 400, "invalid JSON body: unexpected end of JSON input"},
		{"wrong JSON type", "POST", "/networks/create", `{"Name":7}`, 400, "invalid JSON body: json: cannot unmarshal number"},
		{"empty body", "POST", "/networks/create", ``, 400, "request body is empty"},
		{"no name", "POST", "/networks/create", `{"Driver":"bridge"}`, 400, "network name is required"},
		{"blank name", "POST", "/networks/create", `{"Name":" "}`, 400, `network name is required`},
		{"unknown driver", "POST", "/networks/create", `{"Name":"x","Driver":"foo"}`, 404, `plugin "foo" not found`},
		{"unknown IPAM driver", "POST", "/networks/create", `{"Name":"x","IPAM":{"Driver":"dhcp"}}`, 404, `"dhcp" not found`},
		{"bad CIDR", "POST", "/networks/create", `{"Name":"x","IPAM":{"Config":[{"Subnet":"10.0.0/8"}]}}`, 400, `invalid CIDR prefix "10.0.0/8"`},
		{"bad gateway", "POST", "/networks/create", `{"Name":"x","IPAM":{"Config":[{"Subnet":"10.1.0.0/16","Gateway":"10.1.0.x"}]}}`, 400, `invalid IP address "10.1.0.x"`},
		{"bad option", "POST", "/networks/create", `{"Name":"x","Options":{"com.docker.network.driver.mtu":"9"}}`, 400, `is not a valid MTU`},
		{"duplicate name", "POST", "/networks/create", `{"Name":"app"}`, 409, "network with name app already exists"},
		{"predefined name", "POST", "/networks/create", `{"Name":"bridge"}`, 403, "bridge is a pre-defined network and cannot be created"},
		{"swarm scope", "POST", "/networks/create", `{"Name":"x","Scope":"swarm"}`, 501, `scope "swarm" is not supported`},
		{"inspect unknown", "GET", "/networks/nope", ``, 404, "network nope not found"},
		{"delete unknown", "DELETE", "/networks/nope", ``, 404, "network nope not found"},
		{"delete in use", "DELETE", "/networks/app", ``, 403, "has active endpoints"},
		{"delete predefined", "DELETE", "/networks/bridge", ``, 403, "bridge is a pre-defined network and cannot be removed"},
		{"connect unknown network", "POST", "/networks/nope/connect", `{"Container":"web"}`, 404, "network nope not found"},
		{"connect unknown sandbox", "POST", "/networks/app/connect", `{"Container":"ghost"}`, 404, "sandbox ghost not found"},
		{"connect twice", "POST", "/networks/app/connect", `{"Container":"web"}`, 403, "endpoint with name web already exists in network app"},
		{"connect none sandbox", "POST", "/networks/app/connect", `{"Container":"lonely"}`, 400, "network none cannot be combined"},
		{"subnet with host bits", "POST", "/networks/create", `{"Name":"hb","IPAM":{"Config":[{"Subnet":"10.9.0.1/24"}]}}`, 400, "invalid subnet 10.9.0.1/24: it should be 10.9.0.0/24"},
		{"ipv6 subnet with host bits", "POST", "/networks/create", `{"Name":"hb6","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"fd00:9::1/64"}]}}`, 400, "it should be fd00:9::/64"},
		{"a /32", "POST", "/networks/create", `{"Name":"tiny","IPAM":{"Config":[{"Subnet":"10.9.9.9/32"}]}}`, 400, "too small for a network"},
		{"a /31", "POST", "/networks/create", `{"Name":"tiny","IPAM":{"Config":[{"Subnet":"10.9.9.8/31"}]}}`, 400, "use /30 or larger"},
		{"an IPv6 /127", "POST", "/networks/create", `{"Name":"tiny6","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"fd00:9::/127"}]}}`, 400, "use /126 or larger"},
		{"connect no container", "POST", "/networks/app/connect", `{}`, 400, "Container (a sandbox name or ID) is required"},
		{"connect bad IP", "POST", "/networks/bridge/connect", `{"Container":"lonely","EndpointConfig":{"IPAMConfig":{"IPv4Address":"300.1.1.1"}}}`, 400, `invalid IP address "300.1.1.1"`},
		{"connect IP outside subnet", "POST", "/networks/app/connect", `{"Container":"free","EndpointConfig":{"IPAMConfig":{"IPv4Address":"192.0.2.1"}}}`, 400, "address 192.0.2.1 is not in any subnet of network app"},
		{"connect IP taken", "POST", "/networks/app/connect", `{"Container":"free","EndpointConfig":{"IPAMConfig":{"IPv4Address":"` + webIP + `"}}}`, 403, "already"},
		{"connect bad MAC", "POST", "/networks/app/connect", `{"Container":"free","EndpointConfig":{"MacAddress":"zz"}}`, 400, `invalid MAC address "zz"`},
		{"connect LinkLocalIPs not link-local", "POST", "/networks/app/connect", `{"Container":"free","EndpointConfig":{"IPAMConfig":{"LinkLocalIPs":["10.0.0.1"]}}}`, 400, "invalid link-local address 10.0.0.1 in LinkLocalIPs: it must be in 169.254.0.0/16 or fe80::/10"},
		{"connect link to nothing on the default bridge", "POST", "/networks/bridge/connect", `{"Container":"free","EndpointConfig":{"Links":["ghost:b"]}}`, 404, "could not find sandbox for link ghost"},
		{"connect bad link", "POST", "/networks/app/connect", `{"Container":"free","EndpointConfig":{"Links":[":b"]}}`, 400, `invalid link ":b"`},
		{"disconnect not connected", "POST", "/networks/bridge/disconnect", `{"Container":"web"}`, 403, "sandbox web is not connected to network bridge"},
		{"list bad filter", "GET", `/networks?filters={"colour":{"red":true}}`, ``, 400, "invalid filter 'colour'"},
		{"list bad type", "GET", `/networks?filters={"type":["weird"]}`, ``, 400, "invalid filter: 'type'='weird'"},
		{"prune bad until", "POST", `/networks/prune?filters={"until":["soon"]}`, ``, 400, `invalid until filter "soon"`},
		{"body too large", "POST", "/networks/create", `{"Name":"x","Labels":{"a":"` + strings.Repeat("x", maxBody) + `"}}`, 400, "request body is larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(tc.method, tc.path, tc.body)
			if r.status != tc.status || !strings.Contains(r.message(), tc.msg) {
				t.Errorf("status %d %q, want %d containing %q", r.status, r.message(), tc.status, tc.msg)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q: Docker clients only read messages of application/json errors", ct)
			}
			if after := e.state(); after != before {
				t.Errorf("state changed:\n%s\nwant\n%s", after, before)
			}
		})
	}
}

// TestBadDriverOptionLeavesSubnetFree: a network refused for its driver options (a bad
// MTU) answers 400 with the option named, and has taken nothing: its subnet is free for
// the next create.
func TestBadDriverOptionLeavesSubnetFree(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	before := e.state()
	const body = `{"Name":"app","Options":{"com.docker.network.driver.mtu":%q},"IPAM":{"Config":[{"Subnet":"10.33.0.0/24"}]}}`
	r := e.do("POST", "/networks/create", fmt.Sprintf(body, "9"))
	if want := `option com.docker.network.driver.mtu: "9" is not a valid MTU (68 to 65535)`; r.status != 400 || r.message() != want {
		t.Fatalf("bad MTU: status %d %q, want 400 %q", r.status, r.message(), want)
	}
	if after := e.state(); after != before {
		t.Fatalf("state changed:\n%s\nwant\n%s", after, before)
	}
	e.must(201, "POST", "/networks/create", fmt.Sprintf(body, "1400"))
	var got network.Inspect
	e.must(200, "GET", "/networks/app", nil).decode(t, &got)
	if len(got.IPAM.Config) != 1 || got.IPAM.Config[0].Subnet.String() != "10.33.0.0/24" {
		t.Errorf("IPAM config %+v, want the subnet 10.33.0.0/24", got.IPAM.Config)
	}
}

func TestNetworkConnectDisconnect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must(201, "POST", "/networks/create", `{"Name":"app","IPAM":{"Config":[{"Subnet":"10.9.0.0/24"}]}}`)
	e.must(201, "POST", "/pier/v1/sandboxes", `{"Name":"db","Networks":[{"Network":"bridge"}]}`)
	e.must(200, "POST", "/v1.50/networks/app/connect", `{"Container":"db","EndpointConfig":{"IPAMConfig":
		{"IPv4Address":"10.9.0.77","IPv6Address":""},"Aliases":["database"],"MacAddress":"","Links":null}}`)
	var info types.SandboxInfo
	e.must(200, "GET", "/pier/v1/sandboxes/db", nil).decode(t, &info)
	got := map[string]string{}
	for _, ep := range info.Endpoints {
		got[ep.Network] = ep.IfName + " " + ep.IPv4Address + " " + strings.Join(ep.Aliases, ",")
	}
	// The bridge network's first pool (10.128.0.0/24, newEnv's DefaultPools) with its
	// gateway at .1: db is the first sandbox on it.
	want := map[string]string{"bridge": "eth0 10.128.0.2/24 ", "app": "eth1 10.9.0.77/24 database"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("endpoints (-want +got):\n%s", diff)
	}
	e.must(200, "POST", "/networks/app/disconnect", `{"Container":"db","Force":false}`)
	var n network.Inspect
	e.must(200, "GET", "/networks/app", nil).decode(t, &n)
	if len(n.Containers) != 0 {
		t.Errorf("after disconnect, Containers = %v", n.Containers)
	}
	e.must(204, "DELETE", "/networks/app", nil)
	e.must(404, "GET", "/networks/app", nil)
}

func TestNetworkListFilters(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ids := map[string]string{}
	for _, body := range []string{
		`{"Name":"front","Labels":{"tier":"web","env":"prod"}}`,
		`{"Name":"back","Labels":{"tier":"db"}}`,
		`{"Name":"backup","Internal":true}`,
	} {
		var cr network.CreateResponse
		e.must(201, "POST", "/networks/create", body).decode(t, &cr)
		ids[strings.Split(body, `"`)[3]] = cr.ID
	}
	e.must(201, "POST", "/pier/v1/sandboxes", `{"Name":"s","Networks":[{"Network":"back"}]}`)
	for _, tc := range []struct {
		filters string
		want    []string
	}{
		{``, []string{"back", "backup", "bridge", "front", "host", "none"}},
		{`{"name":{"back":true}}`, []string{"back", "backup"}},
		{`{"name":["^back$"]}`, []string{"back"}},
		{`{"name":{"front":true,"none":true}}`, []string{"front", "none"}},
		{`{"id":["` + ids["front"][:6] + `"]}`, []string{"front"}},
		{`{"driver":["null","host"]}`, []string{"host", "none"}},
		{`{"label":["tier"]}`, []string{"back", "front"}},
		{`{"label":["tier=web"]}`, []string{"front"}},
		{`{"label":["tier=web","env=prod"]}`, []string{"front"}},
		{`{"label":["tier=web","env=dev"]}`, nil},
		{`{"scope":["local"]}`, []string{"back", "backup", "bridge", "front", "host", "none"}},
		{`{"scope":["swarm"]}`, nil},
		{`{"type":["builtin"]}`, []string{"bridge", "host", "none"}},
		{`{"type":["custom"]}`, []string{"back", "backup", "front"}},
		{`{"dangling":["true"]}`, []string{"backup", "front"}},
		{`{"dangling":["false"]}`, []string{"back", "bridge", "host", "none"}},
		{`{"type":["custom"],"name":["back"]}`, []string{"back", "backup"}},
	} {
		var list []network.Inspect
		e.must(200, "GET", "/networks?filters="+url.QueryEscape(tc.filters), nil).decode(t, &list)
		var got []string
		for _, n := range list {
			got = append(got, n.Name)
		}
		slices.Sort(got)
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("filters %s (-want +got):\n%s", tc.filters, diff)
		}
	}
}

func TestNetworkPrune(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, body := range []string{`{"Name":"old","Labels":{"keep":"no"}}`, `{"Name":"kept","Labels":{"keep":"yes"}}`,
		`{"Name":"busy"}`, `{"Name":"other"}`} {
		e.must(201, "POST", "/networks/create", body)
	}
	e.must(201, "POST", "/pier/v1/sandboxes", `{"Name":"s","Networks":[{"Network":"busy"}]}`)
	var rep network.PruneReport
	e.must(200, "POST", `/networks/prune?filters=`+url.QueryEscape(`{"until":["1h"]}`), nil).decode(t, &rep)
	if len(rep.NetworksDeleted) != 0 {
		t.Errorf("until=1h pruned %v; the networks are younger", rep.NetworksDeleted)
	}
	e.must(200, "POST", `/networks/prune?filters=`+url.QueryEscape(`{"label!":["keep=yes"],"label":["keep"]}`), nil).decode(t, &rep)
	if diff := cmp.Diff([]string{"old"}, rep.NetworksDeleted); diff != "" {
		t.Errorf("label prune (-want +got):\n%s", diff)
	}
	e.must(200, "POST", "/v1.41/networks/prune", nil).decode(t, &rep)
	if diff := cmp.Diff([]string{"kept", "other"}, rep.NetworksDeleted); diff != "" {
		t.Errorf("prune (-want +got):\n%s", diff)
	}
	var list []network.Inspect
	e.must(200, "GET", "/networks", nil).decode(t, &list)
	var names []string
	for _, n := range list {
		names = append(names, n.Name)
	}
	if diff := cmp.Diff([]string{"bridge", "busy", "host", "none"}, names); diff != "" {
		t.Errorf("left after prune (-want +got):\n%s", diff)
	}
}

func TestVersionInfo(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := e.must(200, "GET", "/v1.41/version", nil)
	for _, want := range []string{`"ApiVersion":"1.50"`, `"MinAPIVersion":"1.24"`, `"Os":"linux"`, `"Version":"test"`} {
		if !strings.Contains(string(r.body), want) {
			t.Errorf("/version %s lacks %s", r.body, want)
		}
	}
	r = e.must(200, "GET", "/info", nil)
	for _, want := range []string{`"ID":"test-id"`, `"Driver":"pier"`, `"OSType":"linux"`, `"Network":["bridge","host","null"]`} {
		if !strings.Contains(string(r.body), want) {
			t.Errorf("/info lacks %s", want)
		}
	}
}

func mustMAC(s string) network.HardwareAddr {
	mac, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return network.HardwareAddr(mac)
}

// TestSmallestSubnetTakesAnEndpoint is the positive control of the /31 and /32
// refusals: a /30 network is created and takes exactly one endpoint.
func TestSmallestSubnetTakesAnEndpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.must(201, "POST", "/networks/create", map[string]any{"Name": "p2p", "IPAM": map[string]any{"Config": []map[string]string{{"Subnet": "10.9.9.8/30"}}}})
	e.must(201, "POST", "/pier/v1/sandboxes", map[string]any{"Name": "one", "Networks": []map[string]string{{"Network": "p2p"}}})
	r := e.do("POST", "/pier/v1/sandboxes", map[string]any{"Name": "two", "Networks": []map[string]string{{"Network": "p2p"}}})
	if r.status < 400 || !strings.Contains(r.message(), "no available") {
		t.Fatalf("second endpoint on a /30: %d %s", r.status, r.message())
	}
}

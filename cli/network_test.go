package cli

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// pick returns the listed keys of a decoded JSON object body.
func pick(t *testing.T, body any, keys ...string) map[string]any {
	t.Helper()
	m, ok := body.(map[string]any)
	if !ok {
		t.Fatalf("body %v is not a JSON object", body)
	}
	out := map[string]any{}
	for _, k := range keys {
		if v, ok := m[k]; ok {
			out[k] = v
		}
	}
	return out
}

func TestNetworkCreateRequest(t *testing.T) {
	keys := []string{"Name", "Driver", "Internal", "Attachable", "EnableIPv6", "IPAM", "Options", "Labels"}
	tests := []struct {
		name string
		args []string
		want string // the picked keys of the body
	}{{
		name: "defaults",
		args: []string{"app"},
		want: `{"Name":"app","Driver":"bridge","Internal":false,"Attachable":false,"Options":null,"Labels":null,
			"IPAM":{"Driver":"default","Options":null,"Config":null}}`,
	}, {
		name: "docker flags",
		args: []string{"-d", "bridge", "--internal", "--attachable", "--ipv6", "-o", "com.docker.network.bridge.name=br-app",
			"--opt", "mtu=1400", "--label", "env=dev", "--label", "flag", "--ipam-driver", "default", "--ipam-opt", "x=y", "app"},
		want: `{"Name":"app","Driver":"bridge","Internal":true,"Attachable":true,"EnableIPv6":true,
			"Options":{"com.docker.network.bridge.name":"br-app","mtu":"1400"},"Labels":{"env":"dev","flag":""},
			"IPAM":{"Driver":"default","Options":{"x":"y"},"Config":null}}`,
	}, {
		name: "ipv6 explicitly off",
		args: []string{"--ipv6=false", "app"},
		want: `{"Name":"app","Driver":"bridge","Internal":false,"Attachable":false,"EnableIPv6":false,"Options":null,"Labels":null,
			"IPAM":{"Driver":"default","Options":null,"Config":null}}`,
	}, {
		name: "ranges gateways and aux matched to subnets",
		args: []string{"--subnet", "10.89.0.0/24", "--subnet", "fd00:89::/64", "--gateway", "fd00:89::1",
			"--gateway", "10.89.0.254", "--ip-range", "10.89.0.128/25", "--aux-address", "router=10.89.0.2",
			"--aux-address", "r6=fd00:89::2", "app"},
		want: `{"Name":"app","Driver":"bridge","Internal":false,"Attachable":false,"Options":null,"Labels":null,
			"IPAM":{"Driver":"default","Options":null,"Config":[
			{"Subnet":"10.89.0.0/24","IPRange":"10.89.0.128/25","Gateway":"10.89.0.254","AuxiliaryAddresses":{"router":"10.89.0.2"}},
			{"Subnet":"fd00:89::/64","Gateway":"fd00:89::1","AuxiliaryAddresses":{"r6":"fd00:89::2"}}]}}`,
	}, {
		name: "comma-separated subnets",
		args: []string{"--subnet", "10.1.0.0/24,10.2.0.0/24", "app"},
		want: `{"Name":"app","Driver":"bridge","Internal":false,"Attachable":false,"Options":null,"Labels":null,
			"IPAM":{"Driver":"default","Options":null,"Config":[{"Subnet":"10.1.0.0/24"},{"Subnet":"10.2.0.0/24"}]}}`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakePierd(t, map[string]reply{"POST /networks/create": {201, `{"Id":"0123456789abcdef","Warning":""}`}})
			res := f.pier(t, "", append([]string{"network", "create"}, tt.args...)...)
			if res.code != 0 || res.out != "0123456789abcdef\n" {
				t.Fatalf("pier = %+v, want the ID and status 0", res)
			}
			got := f.requests()
			if len(got) != 1 || got[0].Path != "/networks/create" {
				t.Fatalf("requests = %+v", got)
			}
			if diff := cmp.Diff(jsonValue(t, tt.want), any(pick(t, got[0].Body, keys...))); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNetworkCreateWarning(t *testing.T) {
	f := newFakePierd(t, map[string]reply{"POST /networks/create": {201, `{"Id":"n1","Warning":"careful"}`}})
	res := f.pier(t, "", "network", "create", "app")
	if res.out != "n1\n" || res.err != "WARNING: careful\n" {
		t.Errorf("pier = %+v", res)
	}
}

func TestNetworkCreateBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--subnet", "10.1.0.0/33"}, `invalid --subnet "10.1.0.0/33"`},
		{[]string{"--subnet", "10.1.0.0/16", "--subnet", "10.1.2.0/24"}, "overlap"},
		{[]string{"--gateway", "10.1.0.1"}, "must have a corresponding --subnet"},
		{[]string{"--subnet", "10.1.0.0/24", "--gateway", "10.2.0.1"}, "no matching subnet for gateway 10.2.0.1"},
		{[]string{"--subnet", "10.1.0.0/24", "--ip-range", "10.1.0.0/16"}, "no matching subnet for range"},
		{[]string{"--subnet", "10.1.0.0/24", "--subnet", "10.2.0.0/24", "--ip-range", "10.1.0.0/25", "--ip-range", "10.1.0.128/25"}, "cannot configure multiple ranges"},
		{[]string{"--subnet", "10.1.0.0/24", "--aux-address", "10.1.0.5"}, "want name=ip"},
		{[]string{"--subnet", "10.1.0.0/24", "--aux-address", "r=10.9.0.5"}, "no matching subnet for aux-address 10.9.0.5"},
		{[]string{"--label", "=x"}, "want key=value"},
	}
	for _, tt := range tests {
		f := newFakePierd(t, nil)
		res := f.pier(t, "", append(append([]string{"network", "create"}, tt.args...), "app")...)
		if res.code != 1 || !strings.Contains(res.err, tt.want) || !strings.HasPrefix(res.err, "Error: ") {
			t.Errorf("%v: pier = %+v, want status 1 and %q", tt.args, res, tt.want)
		}
		if got := f.requests(); len(got) != 0 {
			t.Errorf("%v: sent %+v, want nothing sent", tt.args, got)
		}
	}
}

const twoNetworks = `[
 {"Name":"web","Id":"f00dfeed00112233445566778899aabbccddeeff00112233445566778899aabb","Driver":"bridge","Scope":"local",
  "Labels":{"b":"2","a":"1"},"Created":"2025-01-02T03:04:05Z"},
 {"Name":"app","Id":"abcdef0123456789","Driver":"bridge","Scope":"local","EnableIPv6":true}]`

func TestNetworkLs(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		filters string
		want    string
	}{{
		name: "default table sorted by name",
		want: "NETWORK ID     NAME      DRIVER    SCOPE\n" +
			"abcdef012345   app       bridge    local\n" +
			"f00dfeed0011   web       bridge    local\n",
	}, {
		name: "quiet no-trunc", args: []string{"-q", "--no-trunc"},
		want: "abcdef0123456789\nf00dfeed00112233445566778899aabbccddeeff00112233445566778899aabb\n",
	}, {
		name: "filters", args: []string{"-q", "-f", "name=app", "--filter", "driver=bridge", "-f", "name=web"},
		filters: `{"driver":{"bridge":true},"name":{"app":true,"web":true}}`,
		want:    "abcdef012345\nf00dfeed0011\n",
	}, {
		name: "template", args: []string{"--format", `{{.Name}}: {{.Labels}} {{.Label "a"}} ipv6={{.IPv6}}`},
		want: "app:   ipv6=true\nweb: a=1,b=2 1 ipv6=false\n",
	}, {
		name: "table template", args: []string{"--format", `table {{.Name}}\t{{.IPv6}}\t{{.Label "b"}}`},
		want: "NAME      IPV6      LABEL\napp       true      \nweb       false     2\n",
	}, {
		name: "json", args: []string{"--format", "json"},
		want: `{"ID":"abcdef012345","Name":"app","Driver":"bridge","Scope":"local","IPv4":"false","IPv6":"true","Internal":"false","Labels":"","CreatedAt":"0001-01-01 00:00:00 +0000 UTC"}` + "\n" +
			`{"ID":"f00dfeed0011","Name":"web","Driver":"bridge","Scope":"local","IPv4":"false","IPv6":"false","Internal":"false","Labels":"a=1,b=2","CreatedAt":"2025-01-02 03:04:05 +0000 UTC"}` + "\n",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakePierd(t, map[string]reply{"GET /networks": {200, twoNetworks}})
			res := f.pier(t, "", append([]string{"network", "ls"}, tt.args...)...)
			if res.code != 0 {
				t.Fatalf("pier = %+v", res)
			}
			if diff := cmp.Diff(tt.want, res.out); diff != "" {
				t.Errorf("output (-want +got):\n%s", diff)
			}
			if got := f.requests(); len(got) != 1 || got[0].Query != tt.filters {
				t.Errorf("requests = %+v, want filters %s", got, tt.filters)
			}
		})
	}
}

func TestNetworkLsBadInput(t *testing.T) {
	f := newFakePierd(t, map[string]reply{"GET /networks": {200, twoNetworks}})
	if res := f.pier(t, "", "network", "ls", "-f", "name"); res.code != 1 || !strings.Contains(res.err, "want term=value") {
		t.Errorf("bad filter: %+v", res)
	}
	if res := f.pier(t, "", "network", "ls", "--format", "{{.Nope}}"); res.code != 1 || !strings.Contains(res.err, "Nope") {
		t.Errorf("bad template field: %+v", res)
	}
	if res := f.pier(t, "", "network", "ls", "extra"); res.code != 125 || !strings.Contains(res.err, "accepts no arguments") {
		t.Errorf("extra argument: %+v", res)
	}
}

const appInspect = `{"Name":"app","Id":"abcdef0123456789","Driver":"bridge","Scope":"local",
 "IPAM":{"Driver":"default","Config":[{"Subnet":"10.89.0.0/24","Gateway":"10.89.0.1"}]},
 "Containers":{"s1":{"Name":"web","EndpointID":"e1","MacAddress":"02:42:0a:59:00:02","IPv4Address":"10.89.0.2/24","IPv6Address":""}}}`

func TestNetworkInspect(t *testing.T) {
	replies := map[string]reply{"GET /networks/app": {200, appInspect},
		"GET /networks/nope": {404, `{"message":"network nope not found"}`}}
	tests := []struct {
		name       string
		args       []string
		out, err   string
		code       int
		outPrefix  bool
		outContain string
	}{
		{name: "template", args: []string{"-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", "app"}, out: "10.89.0.0/24\n"},
		{name: "template on the JSON form", args: []string{"-f", "{{.Id}} {{.Name}}", "app"}, out: "abcdef0123456789 app\n"},
		{name: "containers", args: []string{"--format", `{{range $id, $c := .Containers}}{{$c.Name}}={{$c.IPv4Address}}{{end}}`, "app"}, out: "web=10.89.0.2/24\n"},
		{name: "json function", args: []string{"-f", "{{json .IPAM.Config}}", "app"}, out: `[{"Subnet":"10.89.0.0/24","Gateway":"10.89.0.1"}]` + "\n"},
		{name: "default is an indented array", args: []string{"app"}, outPrefix: true, out: "[\n    {\n        \"Name\": \"app\",\n        \"Id\": \"abcdef0123456789\","},
		{name: "one missing", args: []string{"-f", "{{.Name}}", "app", "nope"}, out: "app\n", err: "Error response from pierd: network nope not found\n", code: 1},
		{name: "all missing", args: []string{"nope"}, out: "[]\n", err: "Error response from pierd: network nope not found\n", code: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakePierd(t, replies)
			res := f.pier(t, "", append([]string{"network", "inspect"}, tt.args...)...)
			if tt.outPrefix {
				if !strings.HasPrefix(res.out, tt.out) {
					t.Errorf("output %q does not start with %q", res.out, tt.out)
				}
			} else if res.out != tt.out {
				t.Errorf("output = %q, want %q", res.out, tt.out)
			}
			if res.err != tt.err || res.code != tt.code {
				t.Errorf("stderr, status = %q, %d; want %q, %d", res.err, res.code, tt.err, tt.code)
			}
		})
	}
}

func TestNetworkRm(t *testing.T) {
	f := newFakePierd(t, map[string]reply{
		"DELETE /networks/a":    {204, ""},
		"DELETE /networks/busy": {403, `{"message":"error while removing network: network busy has active endpoints"}`},
		"DELETE /networks/c":    {204, ""},
	})
	res := f.pier(t, "", "network", "rm", "a", "busy", "c")
	want := result{out: "a\nc\n", err: "Error response from pierd: error while removing network: network busy has active endpoints\n", code: 1}
	if res != want {
		t.Errorf("pier = %+v, want %+v", res, want)
	}
	if got := len(f.requests()); got != 3 {
		t.Errorf("%d requests, want 3", got)
	}
}

func TestNetworkPrune(t *testing.T) {
	replies := map[string]reply{"POST /networks/prune": {200, `{"NetworksDeleted":["a","b"]}`}}
	tests := []struct {
		name, stdin string
		args        []string
		sent        bool
		filters     string
		out         string
	}{
		{name: "forced", args: []string{"-f"}, sent: true, out: "Deleted Networks:\na\nb\n"},
		{name: "confirmed", stdin: "y\n", sent: true, out: pruneWarning + "Deleted Networks:\na\nb\n"},
		{name: "declined", stdin: "n\n", out: pruneWarning},
		{name: "eof", stdin: "", out: pruneWarning},
		{name: "filters", args: []string{"-f", "--filter", "until=24h", "--filter", "label=env=test"}, sent: true,
			filters: `{"label":{"env=test":true},"until":{"24h":true}}`, out: "Deleted Networks:\na\nb\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakePierd(t, replies)
			res := f.pier(t, tt.stdin, append([]string{"network", "prune"}, tt.args...)...)
			if res.code != 0 || res.out != tt.out {
				t.Errorf("pier = %+v, want output %q", res, tt.out)
			}
			got := f.requests()
			if sent := len(got) == 1; sent != tt.sent {
				t.Fatalf("requests = %+v, want sent=%v", got, tt.sent)
			}
			if tt.sent && got[0].Query != tt.filters {
				t.Errorf("filters = %s, want %s", got[0].Query, tt.filters)
			}
		})
	}
}

func TestNetworkConnectDisconnect(t *testing.T) {
	replies := map[string]reply{"POST /networks/app/connect": {200, ""}, "POST /networks/app/disconnect": {200, ""}}
	tests := []struct {
		args []string
		path string
		want string
		keys []string
	}{{
		args: []string{"connect", "--ip", "10.89.0.10", "--ip6", "fd00::10", "--alias", "db", "--alias", "sql", "app", "web"},
		path: "/networks/app/connect",
		want: `{"Container":"web","EndpointConfig":{"IPAMConfig":{"IPv4Address":"10.89.0.10","IPv6Address":"fd00::10"},"Aliases":["db","sql"]}}`,
	}, {
		args: []string{"connect", "app", "web"},
		path: "/networks/app/connect",
		want: `{"Container":"web","EndpointConfig":{"IPAMConfig":null,"Aliases":null}}`,
	}, {
		args: []string{"disconnect", "-f", "app", "web"},
		path: "/networks/app/disconnect",
		want: `{"Container":"web","Force":true}`,
	}}
	for _, tt := range tests {
		f := newFakePierd(t, replies)
		res := f.pier(t, "", append([]string{"network"}, tt.args...)...)
		got := f.requests()
		if res.code != 0 || len(got) != 1 || got[0].Path != tt.path {
			t.Fatalf("%v: pier = %+v, requests %+v", tt.args, res, got)
		}
		body := got[0].Body.(map[string]any)
		if ec, ok := body["EndpointConfig"].(map[string]any); ok {
			body["EndpointConfig"] = pick(t, ec, "IPAMConfig", "Aliases")
		}
		if diff := cmp.Diff(jsonValue(t, tt.want), any(body)); diff != "" {
			t.Errorf("%v: body (-want +got):\n%s", tt.args, diff)
		}
	}
}

func TestNetworkConnectBadIP(t *testing.T) {
	f := newFakePierd(t, nil)
	for _, args := range [][]string{{"--ip", "fd00::1"}, {"--ip6", "10.0.0.1"}, {"--ip", "nope"}} {
		res := f.pier(t, "", append(append([]string{"network", "connect"}, args...), "app", "web")...)
		if res.code != 1 || !strings.Contains(res.err, "invalid --ip") {
			t.Errorf("%v: pier = %+v", args, res)
		}
	}
	if got := f.requests(); len(got) != 0 {
		t.Errorf("sent %+v", got)
	}
}

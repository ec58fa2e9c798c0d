package daemon_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/internal/nstest"
)

func TestDockerCLI(t *testing.T) {
	t.Parallel()
	nstest.Require(t, "docker")
	d := newPierd(t)
	d.start()
	if got := d.mustDocker("network", "ls", "--format", "{{.Name}} {{.Driver}}"); got != "bridge bridge\nhost host\nnone null" {
		t.Errorf("network ls:\n%s", got)
	}
	id := d.mustDocker("network", "create", "--subnet", "10.20.0.0/24", "--gateway", "10.20.0.254",
		"--ip-range", "10.20.0.128/25", "--aux-address", "router=10.20.0.2", "--label", "env=test",
		"-o", "com.docker.network.driver.mtu=1400", "app")
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(id) {
		t.Fatalf("network create printed %q, want an ID", id)
	}
	for format, want := range map[string]string{
		"{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}} {{.IPRange}} {{.AuxiliaryAddresses}}{{end}}": "10.20.0.0/24 10.20.0.254 10.20.0.128/25 map[router:10.20.0.2]",
		"{{.Id}} {{.Scope}} {{.Driver}} {{.Internal}} {{.EnableIPv6}}":                               id + " local bridge false false",
		"{{.Labels}} {{index .Options \"com.docker.network.driver.mtu\"}}":                           "map[env:test] 1400",
	} {
		if got := d.mustDocker("network", "inspect", "app", "--format", format); got != want {
			t.Errorf("inspect %s = %q, want %q", format, got, want)
		}
	}

	web := d.sandbox(types.SandboxCreateRequest{Name: "web"})
	db := d.sandbox(types.SandboxCreateRequest{Name: "db"})
	d.mustDocker("network", "connect", "--ip", "10.20.0.200", "--alias", "www", "app", "web")
	d.mustDocker("network", "connect", "app", db.ID[:12])
	containers := d.mustDocker("network", "inspect", "app", "--format",
		"{{range $id, $c := .Containers}}{{$id}} {{$c.Name}} {{$c.IPv4Address}}\n{{end}}")
	for _, want := range []string{web.ID + " web 10.20.0.200/24", db.ID + " db 10.20.0.128/24"} {
		if !strings.Contains(containers, want) {
			t.Errorf("inspect Containers:\n%s\nlacks %q", containers, want)
		}
	}
	if err := nstest.PingOnce(db.Key, netip.MustParseAddr("10.20.0.200")); err != nil {
		t.Errorf("db cannot reach web on app: %v", err)
	}

	before := d.mustDocker("network", "inspect", "bridge", "host", "none", "app")
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"network", "connect", "app", "web"}, "Error response from daemon: endpoint with name web already exists in network app"},
		{[]string{"network", "connect", "app", "ghost"}, "Error response from daemon: sandbox ghost not found"},
		{[]string{"network", "rm", "app"}, "has active endpoints"},
		{[]string{"network", "rm", "bridge"}, "bridge is a pre-defined network and cannot be removed"},
		{[]string{"network", "create", "app"}, "Error response from daemon: network with name app already exists"},
		{[]string{"network", "create", "-d", "foo", "x"}, `Error response from daemon: plugin "foo" not found`},
		{[]string{"network", "create", "--subnet", "10.0.0/8", "x"}, `invalid CIDR prefix "10.0.0/8"`},
		{[]string{"network", "create", "--subnet", "10.20.0.0/16", "x"}, "overlaps"},
		{[]string{"network", "inspect", "nope"}, "network nope not found"},
		{[]string{"network", "disconnect", "bridge", "ghost"}, "sandbox ghost not found"},
		{[]string{"network", "ls", "--filter", "colour=red"}, "invalid filter 'colour'"},
	} {
		if _, err := d.docker(tc.args...); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("docker %s: error %v, want %q", strings.Join(tc.args, " "), err, tc.msg)
		}
	}
	if after := d.mustDocker("network", "inspect", "bridge", "host", "none", "app"); after != before {
		t.Errorf("failed commands changed the networks:\n%s\nwant\n%s", after, before)
	}

	d.mustDocker("network", "disconnect", "app", "web")
	d.mustDocker("network", "disconnect", "--force", "app", "db")
	if got := d.mustDocker("network", "inspect", "app", "--format", "{{len .Containers}}"); got != "0" {
		t.Errorf("after disconnect, %s containers", got)
	}
	d.mustDocker("network", "create", "other")
	d.mustDocker("network", "create", "--label", "keep=yes", "kept")
	if got := d.mustDocker("network", "ls", "--filter", "type=custom", "--filter", "label=keep", "--format", "{{.Name}}"); got != "kept" {
		t.Errorf("ls label filter = %q", got)
	}
	if got := d.mustDocker("network", "prune", "-f", "--filter", "label!=keep"); got != "Deleted Networks:\napp\nother" {
		t.Errorf("prune printed %q", got)
	}
	d.mustDocker("network", "rm", "kept")
	if got := d.mustDocker("network", "ls", "-q", "--filter", "type=custom"); got != "" {
		t.Errorf("custom networks left: %q", got)
	}
	if got := d.mustDocker("version", "--format", "{{.Server.APIVersion}} {{.Server.Os}}"); got != "1.50 linux" {
		t.Errorf("docker version = %q", got)
	}
	if got := d.mustDocker("info", "--format", "{{.Driver}} {{.DockerRootDir}} {{.Plugins.Network}}"); got != "pier "+d.dataRoot+" [bridge host ipvlan macvlan null]" {
		t.Errorf("docker info = %q", got)
	}
}

func TestMobySDK(t *testing.T) {
	t.Parallel()
	d := newPierd(t)
	d.start()
	ctx := t.Context()
	cli, err := client.New(client.WithHost("unix://"+d.sock), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ping, err := cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true})
	if err != nil || ping.APIVersion != "1.50" || ping.OSType != "linux" {
		t.Fatalf("ping: %+v %v", ping, err)
	}
	created, err := cli.NetworkCreate(ctx, "sdk", client.NetworkCreateOptions{Driver: "bridge",
		Labels: map[string]string{"owner": "sdk"},
		IPAM:   &network.IPAM{Driver: "default", Config: []network.IPAMConfig{{Subnet: netip.MustParsePrefix("10.30.0.0/24")}}}})
	if err != nil {
		t.Fatal(err)
	}
	list, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: make(client.Filters).Add("label", "owner=sdk").Add("dangling", "true")})
	if err != nil || len(list.Items) != 1 || list.Items[0].ID != created.ID {
		t.Fatalf("list by label: %+v %v", list, err)
	}

	sb := d.sandbox(types.SandboxCreateRequest{Name: "c1"})
	_, err = cli.NetworkConnect(ctx, "sdk", client.NetworkConnectOptions{Container: "c1", EndpointConfig: &network.EndpointSettings{
		IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: netip.MustParseAddr("10.30.0.9")}, Aliases: []string{"one"}}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := cli.NetworkInspect(ctx, created.ID[:12], client.NetworkInspectOptions{Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	c := got.Network.Containers[sb.ID]
	if c.Name != "c1" || c.IPv4Address != netip.MustParsePrefix("10.30.0.9/24") || c.EndpointID == "" || len(c.MacAddress) != 6 {
		t.Errorf("inspect Containers = %+v", got.Network.Containers)
	}
	if got.Network.IPAM.Config[0].Gateway != netip.MustParseAddr("10.30.0.1") || !got.Network.EnableIPv4 {
		t.Errorf("inspect = %+v", got.Network)
	}

	for name, tc := range map[string]struct {
		err  error
		want func(error) bool
		msg  string
	}{
		"inspect unknown": {err: second(cli.NetworkInspect(ctx, "nope", client.NetworkInspectOptions{})), want: cerrdefs.IsNotFound, msg: "network nope not found"},
		"duplicate":       {err: second(cli.NetworkCreate(ctx, "sdk", client.NetworkCreateOptions{})), want: cerrdefs.IsConflict, msg: "network with name sdk already exists"},
		"in use":          {err: second(cli.NetworkRemove(ctx, "sdk", client.NetworkRemoveOptions{})), want: cerrdefs.IsPermissionDenied, msg: "has active endpoints"},
		"connect twice":   {err: second(cli.NetworkConnect(ctx, "sdk", client.NetworkConnectOptions{Container: "c1"})), want: cerrdefs.IsPermissionDenied, msg: "already exists in network sdk"},
		"bad driver":      {err: second(cli.NetworkCreate(ctx, "x", client.NetworkCreateOptions{Driver: "nope"})), want: cerrdefs.IsNotFound, msg: `plugin "nope" not found`},
	} {
		if tc.err == nil || !tc.want(tc.err) || !strings.Contains(tc.err.Error(), tc.msg) {
			t.Errorf("%s: error %v, want %q of the right kind", name, tc.err, tc.msg)
		}
	}

	if _, err := cli.NetworkDisconnect(ctx, "sdk", client.NetworkDisconnectOptions{Container: sb.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.NetworkRemove(ctx, "sdk", client.NetworkRemoveOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.NetworkInspect(ctx, created.ID, client.NetworkInspectOptions{}); !cerrdefs.IsNotFound(err) {
		t.Errorf("inspect after remove: %v", err)
	}

	old, err := client.New(client.WithHost("unix://"+d.sock), client.WithAPIVersion("1.41"))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if l, err := old.NetworkList(ctx, client.NetworkListOptions{}); err != nil || len(l.Items) != 3 {
		t.Errorf("API 1.41 list: %d networks, %v", len(l.Items), err)
	}
}

func second[T any](_ T, err error) error { return err }

func TestMalformedRequests(t *testing.T) {
	t.Parallel()
	d := newPierd(t)
	d.start()
	before, _ := d.request("GET", "/networks", nil)
	for _, tc := range []struct {
		path, body string
		status     int
		msg        string
	}{
		{"/v1.50/networks/create", `{"Name":`, 400, `{"message":"invalid JSON body: unexpected end of JSON input"}`},
		{"/networks/create", `{"Name":"big","Labels":{"x":"` + strings.Repeat("y", 2<<20) + `"}}`, 400, "request body is larger than 1048576 bytes"},
		{"/networks/bridge/connect", `not json`, 400, "invalid JSON body"},
		{"/pier/v1/sandboxes", `{"Name":"s","Networks":[{"Network":"ghost"}]}`, 404, `{"message":"network ghost not found"}`},
	} {
		r, err := d.request("POST", tc.path, strings.NewReader(tc.body))
		if err != nil || r.status != tc.status || !strings.Contains(string(r.body), tc.msg) {
			t.Errorf("POST %s: %d %s %v, want %d %s", tc.path, r.status, r.body, err, tc.status, tc.msg)
		}
	}
	after, _ := d.request("GET", "/networks", nil)
	if string(after.body) != string(before.body) {
		t.Errorf("networks changed:\n%s\nwant\n%s", after.body, before.body)
	}
	if r, _ := d.request("GET", "/pier/v1/sandboxes", nil); strings.TrimSpace(string(r.body)) != "[]" {
		t.Errorf("sandboxes after failed create: %s", r.body)
	}
}

func TestRestart(t *testing.T) {
	t.Parallel()
	nstest.Require(t, "docker")
	d := newPierd(t)
	d.start()
	d.mustDocker("network", "create", "--subnet", "10.40.0.0/24", "app")
	a := d.sandbox(types.SandboxCreateRequest{Name: "a", Networks: []types.SandboxNetwork{{Network: "app", IPv4Address: "10.40.0.10"}}})
	d.sandbox(types.SandboxCreateRequest{Name: "b", Networks: []types.SandboxNetwork{{Network: "app", IPv4Address: "10.40.0.11"}, {Network: "bridge"}}})
	if err := nstest.PingOnce(a.Key, netip.MustParseAddr("10.40.0.11")); err != nil {
		t.Fatal(err)
	}
	want := snapshot(d)

	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		st := d.stop(sig)
		if sig == syscall.SIGTERM {
			if !st.Success() || !strings.Contains(d.log.String(), "shutting down") {
				t.Errorf("SIGTERM: exit %v, log:\n%s", st, d.log)
			}
			if _, err := os.Stat(d.sock); !os.IsNotExist(err) {
				t.Errorf("socket left after a graceful stop: %v", err)
			}
		}
		d.start()
		if got := snapshot(d); got != want {
			t.Errorf("after %v and restart:\n%s\nwant\n%s", sig, got, want)
		}
		if err := nstest.PingOnce(a.Key, netip.MustParseAddr("10.40.0.11")); err != nil {
			t.Errorf("after %v and restart: %v", sig, err)
		}
	}
}

// snapshot is what a user sees of pierd's state: network list and inspect, sandboxes.
func snapshot(d *pierd) string {
	d.t.Helper()
	names := strings.Fields(d.mustDocker("network", "ls", "--format", "{{.Name}}"))
	inspect := d.mustDocker(append([]string{"network", "inspect"}, names...)...)
	r, err := d.request("GET", "/pier/v1/sandboxes", nil)
	if err != nil {
		d.t.Fatal(err)
	}
	return d.mustDocker("network", "ls", "--no-trunc") + "\n" + inspect + "\n" + string(r.body)
}

func TestSecondPierdRefused(t *testing.T) {
	t.Parallel()
	d := newPierd(t)
	d.start()
	out, err := execOutput("nsenter", d.args(d.sock+"2")...)
	if err == nil {
		t.Fatalf("second pierd on the same data root started:\n%s", out)
	}
	if !strings.Contains(out, "another pierd") || !strings.Contains(out, d.dataRoot) {
		t.Errorf("second pierd: %v, output:\n%s\nwant a message naming the data root and another pierd", err, out)
	}
	if r, err := d.request("GET", "/_ping", nil); err != nil || r.status != 200 {
		t.Errorf("first pierd after the refused start: %v %v", r, err)
	}
}

func TestConfigFileAndFlags(t *testing.T) {
	t.Parallel()
	nstest.Require(t, "docker")
	file := filepath.Join(t.TempDir(), "pierd.json")
	if err := os.WriteFile(file, []byte(`{"default-address-pools":[{"base":"10.99.0.0/16","size":24}],"log-level":"warn"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	d := newPierd(t, "--config", file, "--default-bridge=false")
	d.start()
	if got := d.mustDocker("network", "ls", "--format", "{{.Name}}"); got != "host\nnone" {
		t.Errorf("with --default-bridge=false, networks:\n%s", got)
	}
	d.mustDocker("network", "create", "pooled")
	if got := d.mustDocker("network", "inspect", "pooled", "--format", "{{range .IPAM.Config}}{{.Subnet}}{{end}}"); got != "10.99.0.0/24" {
		t.Errorf("subnet from the configured pool = %q", got)
	}
	// A sandbox without networks has no default bridge to join.
	if sb := d.sandbox(types.SandboxCreateRequest{Name: "alone"}); len(sb.Endpoints) != 0 {
		t.Errorf("sandbox endpoints without a default bridge: %+v", sb.Endpoints)
	}
}

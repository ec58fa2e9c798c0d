package daemon_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/piernet/pier/internal/nstest"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/piernet/pier/api/types"
)

// names Docker accepts for networks: any non-blank name.
var dockerNetworkNames = []string{"test 01", "réseau-ü", "a/b", strings.Repeat("n", 129)}

// TestNetworkNamesDockerCLI creates, inspects, connects to and deletes networks with the
// names Docker accepts, through the docker CLI; a blank name is refused.
func TestNetworkNamesDockerCLI(t *testing.T) {
	t.Parallel()
	nstest.Require(t, "docker")
	d := newPierd(t)
	d.start()
	for i, name := range dockerNetworkNames {
		id := d.mustDocker("network", "create", "--subnet", netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 40, byte(i), 0}), 24).String(), name)
		if got := d.mustDocker("network", "inspect", "-f", "{{.Name}} {{.Id}}", name); got != name+" "+id {
			t.Errorf("inspect %q = %q, want %q", name, got, name+" "+id)
		}
		if ls := d.mustDocker("network", "ls", "--format", "{{.Name}}"); !slices.Contains(strings.Split(ls, "\n"), name) {
			t.Errorf("network ls does not list %q:\n%s", name, ls)
		}
		sb := d.sandbox(types.SandboxCreateRequest{Name: "s" + string(rune('a'+i))})
		d.mustDocker("network", "connect", name, sb.Name)
		if got := d.mustDocker("network", "inspect", "-f", "{{range .Containers}}{{.Name}}{{end}}", name); got != sb.Name {
			t.Errorf("%q's containers = %q, want %s", name, got, sb.Name)
		}
		d.mustDocker("network", "disconnect", name, sb.Name)
		if got := d.mustDocker("network", "rm", name); got != name {
			t.Errorf("network rm %q = %q", name, got)
		}
	}
	if _, err := d.docker("network", "create", "  "); err == nil || !strings.Contains(err.Error(), "network name is required") {
		t.Errorf("blank name: %v, want refused as blank", err)
	}
}

// TestNetworkNamesSDK does the same through the moby Go SDK.
func TestNetworkNamesSDK(t *testing.T) {
	t.Parallel()
	d := newPierd(t)
	d.start()
	ctx := t.Context()
	cli, err := client.New(client.WithHost("unix://"+d.sock), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for _, name := range dockerNetworkNames {
		created, err := cli.NetworkCreate(ctx, name, client.NetworkCreateOptions{})
		if err != nil {
			t.Fatalf("create %q: %v", name, err)
		}
		got, err := cli.NetworkInspect(ctx, name, client.NetworkInspectOptions{})
		if err != nil || got.Network.ID != created.ID || got.Network.Name != name {
			t.Errorf("inspect %q: %+v %v", name, got.Network, err)
		}
		if _, err := cli.NetworkRemove(ctx, name, client.NetworkRemoveOptions{}); err != nil {
			t.Errorf("remove %q: %v", name, err)
		}
	}
	_, err = cli.NetworkCreate(ctx, "", client.NetworkCreateOptions{IPAM: &network.IPAM{}})
	if !cerrdefs.IsInvalidArgument(err) {
		t.Errorf("empty name: %v, want invalid argument", err)
	}
}

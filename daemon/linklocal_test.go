package daemon_test

import (
	"encoding/json"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/internal/nstest"
)

// TestLinkLocalIPs: IPAMConfig.LinkLocalIPs given through the moby SDK are configured
// on the sandbox's interface (ip addr), reachable from another sandbox on the network
// (ping), reported by sandbox inspect and kept across a restart; a non-link-local value
// is a 400 that says so, and changes nothing.
func TestLinkLocalIPs(t *testing.T) {
	t.Parallel()
	d := newPierd(t)
	d.start()
	ctx := t.Context()
	cli, err := client.New(client.WithHost("unix://"+d.sock), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.NetworkCreate(ctx, "ll", client.NetworkCreateOptions{EnableIPv6: new(true),
		IPAM: &network.IPAM{Config: []network.IPAMConfig{{Subnet: netip.MustParsePrefix("10.41.0.0/24")},
			{Subnet: netip.MustParsePrefix("fd00:41::/64")}}}}); err != nil {
		t.Fatal(err)
	}
	a := d.sandbox(types.SandboxCreateRequest{Name: "a"})
	b := d.sandbox(types.SandboxCreateRequest{Name: "b", Networks: []types.SandboxNetwork{{Network: "ll", LinkLocalIPs: []string{"169.254.41.3"}}}})
	connect := func(ips ...string) error {
		_, err := cli.NetworkConnect(ctx, "ll", client.NetworkConnectOptions{Container: "a", EndpointConfig: &network.EndpointSettings{
			IPAMConfig: &network.EndpointIPAMConfig{LinkLocalIPs: parseAddrs(t, ips...)}}})
		return err
	}
	for _, bad := range []string{"10.41.0.9", "fd00:41::9"} {
		if err := connect(bad); !cerrdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "invalid link-local address "+bad+" in LinkLocalIPs: it must be in 169.254.0.0/16 or fe80::/10") {
			t.Errorf("connect with LinkLocalIPs %s: %v, want a 400 saying why", bad, err)
		}
	}
	if got := inspectLinkLocal(t, d, "a"); got != nil {
		t.Fatalf("refused connects left link-local addresses %v", got)
	}
	if err := connect("169.254.41.2", "fe80::41:2"); err != nil {
		t.Fatal(err)
	}
	want := []string{"169.254.41.2", "fe80::41:2"}
	addrs := ipAddrs(t, a.Key)
	for _, w := range []string{"169.254.41.2/16", "fe80::41:2/64"} {
		if !slices.Contains(addrs, w) {
			t.Errorf("ip addr in sandbox a = %v, want %s", addrs, w)
		}
	}
	if err := nstest.PingOnce(b.Key, netip.MustParseAddr("169.254.41.2")); err != nil {
		t.Errorf("ping from b to a's link-local address: %v", err)
	}
	if got := inspectLinkLocal(t, d, "a"); !slices.Equal(got, want) {
		t.Errorf("sandbox inspect LinkLocalIPs = %v, want %v", got, want)
	}
	d.stop(syscall.SIGKILL)
	d.start()
	if got := inspectLinkLocal(t, d, "a"); !slices.Equal(got, want) {
		t.Errorf("after a restart, sandbox inspect LinkLocalIPs = %v, want %v", got, want)
	}
	if err := nstest.PingOnce(b.Key, netip.MustParseAddr("169.254.41.2")); err != nil {
		t.Errorf("after a restart: %v", err)
	}
}

func parseAddrs(t *testing.T, ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// inspectLinkLocal returns the LinkLocalIPs of sandbox name's endpoint on network ll.
func inspectLinkLocal(t *testing.T, d *pierd, name string) []string {
	t.Helper()
	r, err := d.request("GET", "/pier/v1/sandboxes/"+name, nil)
	if err != nil || r.status != 200 {
		t.Fatalf("inspect %s: %v %d %s", name, err, r.status, r.body)
	}
	var info types.SandboxInfo
	if err := json.Unmarshal(r.body, &info); err != nil {
		t.Fatal(err)
	}
	for _, ep := range info.Endpoints {
		if ep.Network == "ll" {
			return ep.LinkLocalIPs
		}
	}
	return nil
}

// ipAddrs lists the addresses (CIDR) in the namespace at key, as `ip -j addr` shows them.
func ipAddrs(t *testing.T, key string) []string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+key, "ip", "-j", "addr").Output()
	if err != nil {
		t.Fatal(err)
	}
	var links []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, l := range links {
		for _, a := range l.AddrInfo {
			addrs = append(addrs, a.Local+"/"+strconv.Itoa(a.Prefixlen))
		}
	}
	return addrs
}

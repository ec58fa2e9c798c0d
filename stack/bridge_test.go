package stack

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/etcfiles"
	"github.com/piernet/pier/internal/nstest"
)

func TestTwoSandboxesOnOneBridgeTalk(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.network(cnm.NetworkSpec{Name: "app"})
	a := e.sandbox("a", "app")
	b := e.sandbox("b", "app")
	if err := nstest.Ping(a.Key, e.addr("b", "app", false)); err != nil {
		t.Fatal(err)
	}
	listen(t, a.Key)
	if err := dialEcho(b.Key, e.addr("a", "app", false), 2*time.Second); err != nil {
		t.Fatalf("TCP b -> a: %v", err)
	}
	hosts, _, _ := etcfiles.Paths(e.s.Controller.Dir(a))
	data, err := os.ReadFile(hosts)
	if err != nil || !strings.Contains(string(data), e.addr("a", "app", false).String()+"\t") {
		t.Errorf("hosts file of a lacks its own address:\n%s (%v)", data, err)
	}
	if got := defaultRoutes(t, a.Key, netlink.FAMILY_V4); len(got) != 1 || !strings.HasPrefix(got[0], "eth0 via ") {
		t.Errorf("default routes of a = %v, want one via eth0", got)
	}
}

func TestNetworksAreIsolated(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.network(cnm.NetworkSpec{Name: "one"})
	e.network(cnm.NetworkSpec{Name: "two"})
	a := e.sandbox("a", "one")
	b := e.sandbox("b", "two")
	c := e.sandbox("c", "one")
	listen(t, b.Key)
	listen(t, c.Key)
	// Same-network control: proves the echo path works, so the failure below is isolation.
	if err := dialEcho(a.Key, e.addr("c", "one", false), 2*time.Second); err != nil {
		t.Fatalf("same-network TCP: %v", err)
	}
	if err := dialEcho(a.Key, e.addr("b", "two", false), 500*time.Millisecond); err == nil {
		t.Fatal("sandbox on network one reached a sandbox on network two")
	}
}

func TestICCDisabledBlocksSameNetwork(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.network(cnm.NetworkSpec{Name: "quiet", Options: map[string]string{"com.docker.network.bridge.enable_icc": "false"}})
	e.network(cnm.NetworkSpec{Name: "loud"})
	a := e.sandbox("a", "quiet", "loud")
	b := e.sandbox("b", "quiet", "loud")
	listen(t, b.Key)
	// Controls: b's listener answers a over the ICC-on network, and the host over the
	// ICC-off bridge itself, so the failure below is ICC, not a dead peer.
	if err := dialEcho(a.Key, e.addr("b", "loud", false), 2*time.Second); err != nil {
		t.Fatalf("ICC=true: a cannot reach b: %v", err)
	}
	if err := dialEcho(e.hostPath, e.addr("b", "quiet", false), 2*time.Second); err != nil {
		t.Fatalf("the host cannot reach b on the ICC=false network: %v", err)
	}
	if err := dialEcho(a.Key, e.addr("b", "quiet", false), 500*time.Millisecond); err == nil {
		t.Fatal("ICC=false: a reached b")
	}
	if err := nstest.Ping(a.Key, n.IPv4[0].Gateway.Addr()); err != nil {
		t.Fatalf("ICC=false must still reach the gateway: %v", err)
	}
}

func TestInternalNetworkHasNoDefaultRoute(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.network(cnm.NetworkSpec{Name: "priv", Internal: true})
	a := e.sandbox("a", "priv")
	e.sandbox("b", "priv")
	if got := defaultRoutes(t, a.Key, netlink.FAMILY_ALL); len(got) != 0 {
		t.Fatalf("internal network sandbox has default routes %v", got)
	}
	if err := nstest.Ping(a.Key, e.addr("b", "priv", false)); err != nil {
		t.Fatalf("internal network peers must talk: %v", err)
	}
}

func TestSandboxOnTwoNetworksKeepsDefaultRoute(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n1 := e.network(cnm.NetworkSpec{Name: "net1"})
	n2 := e.network(cnm.NetworkSpec{Name: "net2"})
	x := e.sandbox("x", "net1", "net2")
	p1 := e.sandbox("p1", "net1")
	p2 := e.sandbox("p2", "net2")
	_, _ = p1, p2
	for _, to := range []string{"p1/net1", "p2/net2"} {
		parts := strings.Split(to, "/")
		if err := nstest.Ping(x.Key, e.addr(parts[0], parts[1], false)); err != nil {
			t.Fatalf("x -> %s: %v", to, err)
		}
	}
	want := "eth0 via " + n1.IPv4[0].Gateway.Addr().String()
	if got := defaultRoutes(t, x.Key, netlink.FAMILY_V4); len(got) != 1 || got[0] != want {
		t.Fatalf("default route = %v, want %s", got, want)
	}
	if err := e.s.Controller.Disconnect(t.Context(), "net1", "x"); err != nil {
		t.Fatal(err)
	}
	want = "eth1 via " + n2.IPv4[0].Gateway.Addr().String()
	if got := defaultRoutes(t, x.Key, netlink.FAMILY_V4); len(got) != 1 || got[0] != want {
		t.Fatalf("after leaving net1: default route = %v, want %s", got, want)
	}
	if err := nstest.Ping(x.Key, e.addr("p2", "net2", false)); err != nil {
		t.Fatalf("x -> p2 after leaving net1: %v", err)
	}
}

func TestDualStackPing6(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.network(cnm.NetworkSpec{Name: "v6", EnableIPv6: true})
	a := e.sandbox("a", "v6")
	e.sandbox("b", "v6")
	to := e.addr("b", "v6", true)
	if !to.Is6() {
		t.Fatalf("b has no IPv6 address")
	}
	if err := nstest.Ping(a.Key, to); err != nil {
		t.Fatal(err)
	}
	if err := nstest.Ping(a.Key, e.addr("b", "v6", false)); err != nil {
		t.Fatal(err)
	}
}

// TestIPv6OnlyNetwork: Docker's EnableIPv4=false. Sandboxes get IPv6 addresses only,
// talk to each other, resolve each other's names, and a published port is reachable
// over both families (IPv4 through the proxy).
func TestIPv6OnlyNetwork(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.s.Controller
	out := outside6(t, e)
	remoteSeen(t, out)
	for _, bad := range []cnm.NetworkSpec{
		{Name: "nov6", DisableIPv4: true},
		{Name: "v4subnet", DisableIPv4: true, EnableIPv6: true, IPAM: []cnm.PoolSpec{{Subnet: netip.MustParsePrefix("10.77.0.0/24")}}},
	} {
		if _, err := c.CreateNetwork(t.Context(), bad); !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("%s: %v, want InvalidArgument", bad.Name, err)
		}
	}
	n := e.network(cnm.NetworkSpec{Name: "v6", EnableIPv6: true, DisableIPv4: true})
	if len(n.IPv4) != 0 || len(n.IPv6) != 1 {
		t.Fatalf("pools: IPv4 %v, IPv6 %v; want IPv6 only", n.IPv4, n.IPv6)
	}
	a := e.sandbox("a", "v6")
	b := e.publishedSandbox("b", "v6", "8080:7777/tcp")
	if got := e.addr("b", "v6", false); got.IsValid() {
		t.Errorf("b has IPv4 address %s on an IPv6-only network", got)
	}
	addrB := e.addr("b", "v6", true)
	if err := nstest.Ping(a.Key, addrB); err != nil {
		t.Fatalf("a → b over IPv6: %v", err)
	}
	listen(t, b.Key)
	if err := dialEcho(a.Key, addrB, 2*time.Second); err != nil {
		t.Fatalf("TCP a → b: %v", err)
	}
	if got, err := lookup(t, e, a, "b"); err != nil || len(got) != 1 || got[0] != addrB.String() {
		t.Errorf("a resolving b = %v, %v; want [%s]", got, err, addrB)
	}
	for _, c := range []struct{ from, to string }{
		{e.hostPath, "127.0.0.1:8080"}, {e.hostPath, "[::1]:8080"}, {out, "198.51.100.1:8080"},
	} {
		if err := dialReaches(c.from, netip.MustParseAddrPort(c.to)); err != nil {
			t.Errorf("published port via %s: %v", c.to, err)
		}
	}
	if src, err := askSourceAt(a.Key, "[2001:db8:1::2]:8080"); err != nil || src != "2001:db8:1::1" {
		t.Errorf("outside saw %q (%v), want the host's address 2001:db8:1::1 (masqueraded)", src, err)
	}
}

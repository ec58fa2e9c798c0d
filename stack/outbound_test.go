package stack

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// outside builds an "internet" namespace linked to the test host by a veth pair:
// host 198.51.100.1/24, outside 198.51.100.2/24. It returns the outside namespace path.
func outside(t *testing.T, e *env) string {
	t.Helper()
	path, h := nstest.NewPinned(t)
	host := e.s.Host
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "uplink"
	if err := host.NL.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "wan", PeerNamespace: netlink.NsFd(int(h))}); err != nil {
		t.Fatal(err)
	}
	configure(t, host, "uplink", "198.51.100.1/24")
	out, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	configure(t, out, "wan", "198.51.100.2/24")
	return path
}

// outside6 is outside with IPv6 too: the host's uplink has 2001:db8:1::1/64, the
// outside namespace 2001:db8:1::2/64 (no DAD).
func outside6(t *testing.T, e *env) string {
	t.Helper()
	path := outside(t, e)
	addV6(t, e.hostPath, "uplink", "2001:db8:1::1/64")
	addV6(t, path, "wan", "2001:db8:1::2/64")
	return path
}

func addV6(t *testing.T, key, link, cidr string) {
	t.Helper()
	ns, err := netns.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	l, err := ns.NL.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr(cidr)
	a.Flags = unix.IFA_F_NODAD
	if err := ns.NL.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
}

func configure(t *testing.T, ns *netns.Namespace, name, cidr string) {
	t.Helper()
	l, err := ns.NL.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr(cidr)
	if err := ns.NL.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	if err := ns.NL.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
}

// remoteSeen starts a server in the namespace at path that writes back the client's
// address as it sees it.
func remoteSeen(t *testing.T, path string) {
	t.Helper()
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", ":8080"); return }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, c.RemoteAddr().(*net.TCPAddr).IP.String())
			c.Close()
		}
	}()
}

func askSource(key string) (string, error) { return askSourceAt(key, "198.51.100.2:8080") }

// askSourceAt asks remoteSeen's server at addr which source address it sees.
func askSourceAt(key, addr string) (string, error) {
	ns, err := netns.Open(key)
	if err != nil {
		return "", err
	}
	defer ns.Close()
	var c net.Conn
	if err := ns.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, 2*time.Second); return }); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestOutboundIsMasqueradedAndFollowsTheGateway(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	out := outside(t, e)
	remoteSeen(t, out)
	e.network(cnm.NetworkSpec{Name: "alpha"})
	e.network(cnm.NetworkSpec{Name: "beta", Options: map[string]string{"com.docker.network.bridge.enable_ip_masquerade": "false"}})
	sb := e.sandbox("s", "alpha", "beta")
	src, err := askSource(sb.Key)
	if err != nil || src != "198.51.100.1" {
		t.Fatalf("outside saw %q (%v), want the host's address 198.51.100.1 (masqueraded)", src, err)
	}
	// alpha leaves: beta (no masquerade) takes over the default route, so the outside
	// now sees the sandbox's own address.
	if err := e.s.Controller.Disconnect(t.Context(), "alpha", "s"); err != nil {
		t.Fatal(err)
	}
	want := e.addr("s", "beta", false).String()
	// The outside has no route back to beta's subnet: give it one, as a router would.
	o, _ := netns.Open(out)
	defer o.Close()
	n, _ := e.s.Controller.Network(t.Context(), "beta")
	dst := netns.PrefixToIPNet(n.IPv4[0].Subnet)
	if err := o.NL.RouteAdd(&netlink.Route{Dst: dst, Gw: netip.MustParseAddr("198.51.100.1").AsSlice()}); err != nil {
		t.Fatal(err)
	}
	if src, err := askSource(sb.Key); err != nil || src != want {
		t.Fatalf("after failover outside saw %q (%v), want unmasqueraded %s", src, err, want)
	}
}

func TestInternalNetworkCannotReachOutside(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	out := outside(t, e)
	remoteSeen(t, out)
	e.network(cnm.NetworkSpec{Name: "priv", Internal: true})
	e.network(cnm.NetworkSpec{Name: "pub"})
	control := e.sandbox("control", "pub")
	if _, err := askSource(control.Key); err != nil {
		t.Fatalf("control sandbox on a normal network cannot reach outside: %v", err)
	}
	sb := e.sandbox("s", "priv")
	if src, err := askSource(sb.Key); err == nil {
		t.Fatalf("internal sandbox reached the outside (seen as %s)", src)
	}
}

package stack

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/netns"
)

func TestBridgeOptionsReachTheKernel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.network(cnm.NetworkSpec{Name: "opts", EnableIPv6: true, Options: map[string]string{
		"com.docker.network.bridge.name":            "bropts",
		"com.docker.network.driver.mtu":             "1400",
		"com.docker.network.container_iface_prefix": "ens",
	}})
	sb := e.sandbox("a", "opts")
	ep, err := e.s.Controller.Endpoint(t.Context(), "opts", "a")
	if err != nil {
		t.Fatal(err)
	}
	inside, err := netns.Open(sb.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	l, err := inside.NL.LinkByName("ens0")
	if err != nil {
		t.Fatalf("container_iface_prefix: %v", err)
	}
	host := e.s.Host
	hl, err := host.NL.LinkByName("pv" + ep.ID[:12])
	if err != nil {
		t.Fatal(err)
	}
	br, err := host.NL.LinkByName("bropts")
	if err != nil {
		t.Fatalf("bridge name option: %v", err)
	}
	if l.Attrs().MTU != 1400 || hl.Attrs().MTU != 1400 || br.Attrs().MTU != 1400 {
		t.Errorf("MTU sandbox=%d host=%d bridge=%d, want 1400", l.Attrs().MTU, hl.Attrs().MTU, br.Attrs().MTU)
	}
	a4 := ep.Addr4.Addr().As4()
	wantMAC := net.HardwareAddr{0x02, 0x42, a4[0], a4[1], a4[2], a4[3]}.String()
	if got := l.Attrs().HardwareAddr.String(); got != wantMAC || ep.MAC != wantMAC {
		t.Errorf("MAC = %s (record %s), want %s derived from %s", got, ep.MAC, wantMAC, ep.Addr4)
	}
	addrs, err := netns.Dump(func() ([]netlink.Addr, error) { return inside.NL.AddrList(l, netlink.FAMILY_V6) })
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range addrs {
		if !a.IP.Equal(ep.Addr6.Addr().AsSlice()) {
			continue
		}
		found = true
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_NODAD) != unix.IFA_F_NODAD {
			t.Errorf("IPv6 %s flags %#x: want NODAD and never tentative", a.IP, a.Flags)
		}
	}
	if !found {
		t.Errorf("IPv6 address %s not on ens0: %v", ep.Addr6, addrs)
	}
}

func TestBadBridgeOptionsAndOverlapsAreRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, opts := range []map[string]string{
		{"com.docker.network.driver.mtu": "tiny"},
		{"com.docker.network.bridge.enable_icc": "maybe"},
		{"com.docker.network.bridge.nmae": "typo"},
	} {
		_, err := e.s.Controller.CreateNetwork(t.Context(), cnm.NetworkSpec{Name: "bad", Options: opts})
		if !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("options %v: %v, want InvalidArgument", opts, err)
		}
	}
	e.network(cnm.NetworkSpec{Name: "one", IPAM: []cnm.PoolSpec{{Subnet: netip.MustParsePrefix("10.20.0.0/16")}}})
	_, err := e.s.Controller.CreateNetwork(t.Context(), cnm.NetworkSpec{Name: "two", IPAM: []cnm.PoolSpec{{Subnet: netip.MustParsePrefix("10.20.5.0/24")}}})
	if !errdefs.Is(err, errdefs.KindForbidden) || !strings.Contains(err.Error(), "one") {
		t.Errorf("overlapping subnet: %v, want Forbidden (Docker: 403) naming network one", err)
	}
	if got := len(e.s.Controller.Networks(t.Context())); got != 1 {
		t.Errorf("%d networks after refused creates, want 1", got)
	}
	one, err := e.s.Controller.Network(t.Context(), "one")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := links(t, e.hostPath), []string{"br-" + one.ID[:12], "lo"}; !slices.Equal(got, want) {
		t.Errorf("host links after refused creates: %v, want %v", got, want)
	}
}

func TestAutoPoolSkipsRoutedSubnets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// Something on the host already uses 172.17.5.0/24: the first default pool is taken.
	host := e.s.Host
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "uplink"
	if err := host.NL.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "uplink-peer"}); err != nil {
		t.Fatal(err)
	}
	l, _ := host.NL.LinkByName("uplink")
	addr, _ := netlink.ParseAddr("172.17.5.1/24")
	if err := host.NL.AddrAdd(l, addr); err != nil {
		t.Fatal(err)
	}
	if err := host.NL.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	n := e.network(cnm.NetworkSpec{Name: "auto"})
	if got := n.IPv4[0].Subnet.String(); got != "172.18.0.0/16" {
		t.Fatalf("auto subnet = %s, want 172.18.0.0/16 (172.17.0.0/16 is routed)", got)
	}
}

func TestPredefinedNetworksHostAndNone(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.s.Controller
	ctx := t.Context()
	if err := c.EnsurePredefined(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Host.NL.LinkByName("pier0"); err != nil {
		t.Fatalf("default bridge pier0: %v", err)
	}
	if err := c.DeleteNetwork(ctx, "bridge"); !errdefs.Is(err, errdefs.KindForbidden) {
		t.Errorf("deleting predefined bridge: %v, want Forbidden", err)
	}
	if _, err := c.CreateNetwork(ctx, cnm.NetworkSpec{Name: "host2", Driver: "host"}); !errdefs.Is(err, errdefs.KindForbidden) {
		t.Errorf("second host network: %v, want Forbidden", err)
	}
	none := e.sandbox("isolated", "none")
	if got := links(t, none.Key); len(got) != 1 || got[0] != "lo" {
		t.Errorf("none sandbox links = %v, want only lo", got)
	}
	hs, err := c.CreateSandbox(ctx, cnm.SandboxSpec{Name: "hostnet", HostNetwork: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(ctx, "host", "hostnet", cnm.EndpointSpec{}); err != nil {
		t.Fatal(err)
	}
	if hs.Key != e.hostPath {
		t.Errorf("host sandbox key = %s, want the host namespace %s", hs.Key, e.hostPath)
	}
	if _, err := c.Connect(ctx, "bridge", "hostnet", cnm.EndpointSpec{}); !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Errorf("host sandbox joining bridge: %v, want InvalidArgument (Docker: 400)", err)
	}
	if _, err := c.Connect(ctx, "bridge", "isolated", cnm.EndpointSpec{}); !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Errorf("none sandbox joining bridge: %v, want InvalidArgument (Docker: 400)", err)
	}
}

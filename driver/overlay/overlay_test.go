package overlay

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// twoHosts is two host namespaces joined by a veth underlay (192.0.2.1 and .2), each
// with an overlay driver, and one network known to both.
type twoHosts struct {
	t      *testing.T
	hosts  [2]*netns.Namespace
	drv    [2]*Driver
	under  [2]string // underlay interface names
	nc     driver.NetworkConfig
	vtep   [2]netip.Addr
	sboxes [2]*netns.Namespace
	eps    [2]driver.EndpointConfig
	macs   [2]net.HardwareAddr
}

func newTwoHosts(t *testing.T) *twoHosts {
	t.Helper()
	nstest.Require(t, "root")
	h := &twoHosts{t: t, under: [2]string{"under0", "under1"}, vtep: [2]netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")}}
	for i := range h.hosts {
		h.hosts[i] = netlab.NewNS(t)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = h.under[0]
	must(t, h.hosts[0].NL.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: h.under[1], PeerNamespace: netlink.NsFd(int(h.hosts[1].Handle))}))
	for i, ns := range h.hosts {
		l, err := ns.NL.LinkByName(h.under[i])
		must(t, err)
		must(t, ns.NL.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: h.vtep[i].AsSlice(), Mask: net.CIDRMask(24, 32)}}))
		must(t, ns.NL.LinkSetUp(l))
		h.drv[i] = New(Options{Kernel: HostKernel{Host: ns}, Advertise: h.vtep[i]})
	}
	h.nc = driver.NetworkConfig{ID: "n1aaaaaaaaaaaaaaaaaaaa", Name: "ov", VNIs: []uint32{4242},
		IPv4: []driver.IPAMData{{Pool: netip.MustParsePrefix("10.0.7.0/24")}}}
	for i := range h.drv {
		must(t, h.drv[i].CreateNetwork(t.Context(), h.nc))
	}
	return h
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// join creates and joins endpoint i (10.0.7.1i) on host i and configures its address
// as the controller would.
func (h *twoHosts) join(i int) {
	t := h.t
	t.Helper()
	ctx := t.Context()
	h.sboxes[i] = netlab.NewNS(t)
	h.eps[i] = driver.EndpointConfig{NetworkID: h.nc.ID, EndpointID: fmt.Sprintf("e%daaaaaaaaaaaaaaaaaaaa", i),
		Addr4: netip.MustParsePrefix(fmt.Sprintf("10.0.7.1%d/24", i))}
	info, err := h.drv[i].CreateEndpoint(ctx, h.eps[i])
	must(t, err)
	h.macs[i] = info.MAC
	_, err = h.drv[i].Join(ctx, driver.JoinRequest{NetworkID: h.nc.ID, EndpointID: h.eps[i].EndpointID, SandboxKey: h.sboxes[i].Path, IfName: "eth0"})
	must(t, err)
	sb := h.sboxes[i]
	l, err := sb.NL.LinkByName("eth0")
	must(t, err)
	a := h.eps[i].Addr4
	must(t, sb.NL.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), 32)}}))
	must(t, sb.NL.LinkSetUp(l))
	t.Cleanup(func() { _ = h.drv[i].Leave(ctx, h.nc.ID, h.eps[i].EndpointID) })
}

// peer tells host i about host j's endpoint.
func (h *twoHosts) peer(i, j int, add bool) {
	h.t.Helper()
	p := driver.Peer{NetworkID: h.nc.ID, EndpointID: h.eps[j].EndpointID, Node: h.vtep[j], Addr4: h.eps[j].Addr4, MAC: h.macs[j]}
	if add {
		must(h.t, h.drv[i].AddPeer(h.t.Context(), p))
	} else {
		must(h.t, h.drv[i].RemovePeer(h.t.Context(), p))
	}
}

func linkNames(t *testing.T, ns *netns.Namespace) map[string]netlink.Link {
	t.Helper()
	links, err := netns.Dump(ns.NL.LinkList)
	must(t, err)
	out := map[string]netlink.Link{}
	for _, l := range links {
		out[l.Attrs().Name] = l
	}
	return out
}

// echo serves TCP on addr in ns, echoing everything back.
func echo(t *testing.T, ns *netns.Namespace, addr string) {
	netlab.Serve(t, ns, addr, func(c net.Conn) {
		defer c.Close()
		_, _ = io.Copy(c, c)
	})
}

// roundTrip sends size random bytes from ns to addr and checks the echo, retrying the
// connection for up to 5 s (neighbour setup on a loaded machine).
func roundTrip(t *testing.T, ns *netns.Namespace, addr string, size int) error {
	t.Helper()
	payload := make([]byte, size)
	_, _ = rand.Read(payload)
	deadline := time.Now().Add(5 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		var c net.Conn
		if c, err = netlab.Dial(t, ns, "tcp", addr, time.Second); err != nil {
			continue
		}
		err = exchange(c, payload)
		c.Close()
		if err == nil {
			return nil
		}
	}
	return err
}

func exchange(c net.Conn, payload []byte) error {
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return werr
	}
	if err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("echo differs: got %d bytes, sent %d", len(got), len(payload))
	}
	return nil
}

func TestOverlayAcrossHosts(t *testing.T) {
	h := newTwoHosts(t)
	if _, ok := linkNames(t, h.hosts[0])["ovbr4242"]; ok {
		t.Fatal("network extended to a host before any local join")
	}
	h.join(0)
	h.join(1)
	for i := range h.hosts {
		links := linkNames(t, h.hosts[i])
		vx, ok := links["ovvx4242"].(*netlink.Vxlan)
		if !ok || vx.VxlanId != 4242 || vx.Port != DefaultPort || vx.Learning || links["ovbr4242"] == nil {
			t.Fatalf("host %d devices: %+v", i, links["ovvx4242"])
		}
		eth0 := linkNames(t, h.sboxes[i])["eth0"]
		if eth0.Attrs().MTU != 1500-overhead4 {
			t.Fatalf("sandbox MTU %d, want %d", eth0.Attrs().MTU, 1500-overhead4)
		}
	}
	echo(t, h.sboxes[1], "10.0.7.11:7000")
	// Without peers nothing is learned or flooded: the other host is unreachable.
	c, err := netlab.Dial(t, h.sboxes[0], "tcp", "10.0.7.11:7000", 700*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatal("reached the other host's endpoint with no peers programmed")
	}
	h.peer(0, 1, true)
	h.peer(1, 0, true)
	capture := startCapture(t, h.hosts[1], h.under[1])
	// 1 MB each way: the MTU is right, not only pings.
	if err := roundTrip(t, h.sboxes[0], "10.0.7.11:7000", 1<<20); err != nil {
		t.Fatalf("TCP across hosts: %v", err)
	}
	if vni, n := capture(); n == 0 || vni != 4242 {
		t.Fatalf("on the underlay: %d VXLAN packets, VNI %d; want VNI 4242 on port %d", n, vni, DefaultPort)
	}
	// The peer withdrawn: unreachable again (its neighbour entry is gone).
	h.peer(0, 1, false)
	flushNeigh(t, h.sboxes[0])
	if c, err := netlab.Dial(t, h.sboxes[0], "tcp", "10.0.7.11:7000", 700*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("reached a withdrawn peer")
	}
	// Last leave withdraws the network from the host.
	must(t, h.drv[0].Leave(t.Context(), h.nc.ID, h.eps[0].EndpointID))
	for _, name := range []string{"ovbr4242", "ovvx4242"} {
		if _, ok := linkNames(t, h.hosts[0])[name]; ok {
			t.Fatalf("%s left on the host after its last endpoint left", name)
		}
	}
}

func flushNeigh(t *testing.T, ns *netns.Namespace) {
	l, err := ns.NL.LinkByName("eth0")
	must(t, err)
	neighs, err := netns.Dump(func() ([]netlink.Neigh, error) { return ns.NL.NeighList(l.Attrs().Index, unix.AF_INET) })
	must(t, err)
	for _, n := range neighs {
		_ = ns.NL.NeighDel(&n)
	}
}

// startCapture counts the VXLAN packets to DefaultPort on dev in ns until the returned
// function is called, which reports the VNI of the last one and how many there were.
func startCapture(t *testing.T, ns *netns.Namespace, dev string) func() (uint32, int) {
	t.Helper()
	var vni uint32
	var n int
	stop := netlab.Capture(t, ns, dev, func(f []byte) {
		if v, _, ok := netlab.VXLAN(f, DefaultPort); ok {
			vni, n = v, n+1
		}
	})
	return func() (uint32, int) {
		stop()
		return vni, n
	}
}

// TestManyPeers programs 5,000 peers on one host without any sysctl tuning (Docker's
// overlay broke near 1,000 when its neighbour entries hit gc_thresh3) and checks the
// last one still works end to end.
func TestManyPeers(t *testing.T) {
	h := newTwoHosts(t)
	h.join(0)
	h.join(1)
	const n = 5000
	for i := range n {
		p := driver.Peer{NetworkID: h.nc.ID, EndpointID: fmt.Sprintf("x%d", i), Node: netip.MustParseAddr("192.0.2.99"),
			Addr4: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 8),
			MAC:   net.HardwareAddr{2, 0x43, 0, 0, byte(i >> 8), byte(i)}}
		if err := h.drv[0].AddPeer(t.Context(), p); err != nil {
			t.Fatalf("peer %d: %v", i, err)
		}
	}
	h.peer(0, 1, true)
	h.peer(1, 0, true)
	vx, err := h.hosts[0].NL.LinkByName("ovvx4242")
	must(t, err)
	neighs, err := netns.Dump(func() ([]netlink.Neigh, error) { return h.hosts[0].NL.NeighList(vx.Attrs().Index, unix.AF_INET) })
	must(t, err)
	if len(neighs) != n+1 {
		t.Fatalf("%d neighbour entries on the VXLAN device, want %d", len(neighs), n+1)
	}
	echo(t, h.sboxes[1], "10.0.7.11:7001")
	if err := roundTrip(t, h.sboxes[0], "10.0.7.11:7001", 64<<10); err != nil {
		t.Fatalf("TCP across hosts with %d peers: %v", n, err)
	}
}

// BenchmarkAddPeer measures programming one more peer with N already programmed
// (the overlay issue's goal: join cost flat, ratio ≤ 1.2 between N=1,000 and N=10).
func BenchmarkAddPeer(b *testing.B) {
	for _, existing := range []int{10, 1000, 5000} {
		b.Run(fmt.Sprintf("N=%d", existing), func(b *testing.B) {
			benchAddPeer(b, existing)
		})
	}
}

func benchAddPeer(b *testing.B, existing int) {
	d, nc, _ := benchHost(b, existing)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := benchPeer(nc, existing+1+i%50000)
		if err := d.AddPeer(ctx, p); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		_ = d.RemovePeer(ctx, p)
		b.StartTimer()
	}
}

// BenchmarkOverlayJoinAtScale measures one more local endpoint joining an overlay that
// already has N endpoints on other hosts (the overlay issue's goal: the join cost is
// flat, ratio ≤ 1.2 between N=1,000 and N=10). "join" is the usual case, the network
// already extended to this host; "extend" is the host's first join, which programs
// all N peers and so grows with N by design.
func BenchmarkOverlayJoinAtScale(b *testing.B) {
	for _, first := range []bool{false, true} {
		for _, existing := range []int{10, 1000} {
			name := fmt.Sprintf("join/N=%d", existing)
			if first {
				name = fmt.Sprintf("extend/N=%d", existing)
			}
			b.Run(name, func(b *testing.B) { benchJoin(b, existing, first) })
		}
	}
}

func benchJoin(b *testing.B, existing int, first bool) {
	d, nc, sb := benchHost(b, existing)
	ctx := context.Background()
	if first {
		if err := d.Leave(ctx, nc.ID, "local0000000"); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ec := driver.EndpointConfig{NetworkID: nc.ID, EndpointID: fmt.Sprintf("join%08d", i),
			Addr4: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}), 8)}
		if _, err := d.CreateEndpoint(ctx, ec); err != nil {
			b.Fatal(err)
		}
		if _, err := d.Join(ctx, driver.JoinRequest{NetworkID: nc.ID, EndpointID: ec.EndpointID, SandboxKey: sb.Path, IfName: "eth1"}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := d.Leave(ctx, nc.ID, ec.EndpointID); err != nil {
			b.Fatal(err)
		}
		_ = d.DeleteEndpoint(ctx, nc.ID, ec.EndpointID)
		b.StartTimer()
	}
}

// benchHost is a host namespace with an underlay, a driver, one network extended to
// the host by a joined local endpoint, and existing peers on another host.
func benchHost(b *testing.B, existing int) (*Driver, driver.NetworkConfig, *netns.Namespace) {
	nstest.Require(b, "root")
	host := netlab.NewNS(b)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "under0"
	if err := host.NL.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "under1"}); err != nil {
		b.Fatal(err)
	}
	l, _ := host.NL.LinkByName("under0")
	_ = host.NL.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP{192, 0, 2, 1}, Mask: net.CIDRMask(24, 32)}})
	_ = host.NL.LinkSetUp(l)
	d := New(Options{Kernel: HostKernel{Host: host}, Advertise: netip.MustParseAddr("192.0.2.1")})
	nc := driver.NetworkConfig{ID: "bench", Name: "bench", VNIs: []uint32{4300}}
	ctx := context.Background()
	if err := d.CreateNetwork(ctx, nc); err != nil {
		b.Fatal(err)
	}
	sb := netlab.NewNS(b)
	if _, err := d.CreateEndpoint(ctx, driver.EndpointConfig{NetworkID: nc.ID, EndpointID: "local0000000"}); err != nil {
		b.Fatal(err)
	}
	if _, err := d.Join(ctx, driver.JoinRequest{NetworkID: nc.ID, EndpointID: "local0000000", SandboxKey: sb.Path, IfName: "eth0"}); err != nil {
		b.Fatal(err)
	}
	for i := range existing {
		if err := d.AddPeer(ctx, benchPeer(nc, i)); err != nil {
			b.Fatal(err)
		}
	}
	return d, nc, sb
}

func benchPeer(nc driver.NetworkConfig, i int) driver.Peer {
	return driver.Peer{NetworkID: nc.ID, EndpointID: fmt.Sprintf("x%d", i), Node: netip.MustParseAddr("192.0.2.99"),
		Addr4: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 8),
		MAC:   net.HardwareAddr{2, 0x43, 0, byte(i >> 16), byte(i >> 8), byte(i)}}
}

// TestTunnelProbeAcrossHosts runs the tunnel probe over a real VXLAN pair: a working
// tunnel earns no warning; one whose far end silently drops TCP (what a broken
// checksum offload looks like from here) earns the warning naming the interface.
func TestTunnelProbeAcrossHosts(t *testing.T) {
	for _, tc := range []struct {
		name              string
		dropTCP, wantWarn bool
	}{{"tcp works", false, false}, {"tcp dropped", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTwoHosts(t)
			rec := &recorder{}
			h.drv[0] = New(Options{Kernel: HostKernel{Host: h.hosts[0]}, Advertise: h.vtep[0], Logger: slog.New(rec),
				ProbeTunnel: true})
			must(t, h.drv[0].CreateNetwork(t.Context(), h.nc))
			h.drv[0].Start(t.Context())
			t.Cleanup(func() { _ = h.drv[0].Close() })
			h.join(1)
			if tc.dropTCP {
				nft := exec.Command("nsenter", "--net="+h.sboxes[1].Path, "nft", "-f", "-")
				nft.Stdin = strings.NewReader("table inet t { chain in { type filter hook input priority 0; meta l4proto tcp drop; }; }")
				if out, err := nft.CombinedOutput(); err != nil {
					t.Fatalf("nft: %v: %s", err, out)
				}
			}
			h.join(0)
			h.peer(1, 0, true)
			h.peer(0, 1, true) // host 0 probes host 1 from its joined sandbox
			got := rec.waitOutcomes(t, 1, 10*time.Second)
			want := "DEBUG 192.0.2.2 tunnel probe: TCP and ICMP pass"
			if tc.wantWarn {
				want = "WARN 192.0.2.2 " + tcpFailsMessage("ov", h.vtep[1], "under0")
			}
			if got[0] != want {
				t.Fatalf("probe outcome %q, want %q", got[0], want)
			}
		})
	}
}

// Fail closed at the join: on a host without a WireGuard tunnel an encrypted
// network's join fails with the reason, and nothing of the network is left (a
// plain network on the same host joins fine: the positive control).
func TestEncryptedJoinWithoutTunnelFails(t *testing.T) {
	nstest.Require(t, "root")
	host := netlab.NewNS(t)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "under0"
	if err := host.NL.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "under1"}); err != nil {
		t.Fatal(err)
	}
	l, _ := host.NL.LinkByName("under0")
	_ = host.NL.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP{192, 0, 2, 1}, Mask: net.CIDRMask(24, 32)}})
	_ = host.NL.LinkSetUp(l)
	d := New(Options{Kernel: HostKernel{Host: host, TunnelErr: "no TUN device"}, Advertise: netip.MustParseAddr("192.0.2.1")})
	ctx := t.Context()
	for _, c := range []struct {
		id   string
		vni  uint32
		opts map[string]string
	}{{"sec", 4400, map[string]string{optEncrypted: ""}}, {"plain", 4401, nil}} {
		if err := d.CreateNetwork(ctx, driver.NetworkConfig{ID: c.id, Name: c.id, VNIs: []uint32{c.vni}, Options: c.opts}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.CreateEndpoint(ctx, driver.EndpointConfig{NetworkID: c.id, EndpointID: c.id + "ep000000000"}); err != nil {
			t.Fatal(err)
		}
	}
	sb := netlab.NewNS(t)
	_, err := d.Join(ctx, driver.JoinRequest{NetworkID: "sec", EndpointID: "secep000000000", SandboxKey: sb.Path, IfName: "eth0"})
	if !errdefs.Is(err, errdefs.KindUnavailable) || !strings.Contains(err.Error(), "no TUN device") {
		t.Fatalf("joining an encrypted network without a tunnel: %v", err)
	}
	for _, name := range []string{"ovvx4400", "ovbr4400"} {
		if _, err := host.NL.LinkByName(name); err == nil {
			t.Fatalf("%s exists after the failed join", name)
		}
	}
	if _, err := d.Join(ctx, driver.JoinRequest{NetworkID: "plain", EndpointID: "plainep000000000", SandboxKey: sb.Path, IfName: "eth1"}); err != nil {
		t.Fatalf("a plain network on the same host: %v", err)
	}
}

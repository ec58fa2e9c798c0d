package stack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/cluster"
	"github.com/piernet/pier/cluster/clustertest"
	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// clusterHosts are n test hosts on one underlay (a bridge in a lab namespace), each a
// clustered stack on one embedded etcd.
func clusterHosts(t testing.TB, n int) []*env { return newClusterLab(t, n).hosts }

// clusterLab is clustered test hosts h1..hn at 192.0.2.1... and the lab namespace whose
// bridge lab0 is their underlay.
type clusterLab struct {
	hosts []*env
	lab   string // the lab namespace's path
}

// newClusterLab builds n clustered hosts; setup adjusts every host's cluster options.
func newClusterLab(t testing.TB, n int, setup ...func(*ClusterOptions)) *clusterLab {
	t.Helper()
	nstest.Require(t, "root")
	etcd := clustertest.Start(t)
	labPath, _ := nstest.NewPinned(t)
	lab, err := netns.Open(labPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Close() })
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "lab0"}}
	if err := lab.NL.LinkAdd(br); err != nil {
		t.Fatal(err)
	}
	if err := lab.NL.LinkSetUp(br); err != nil {
		t.Fatal(err)
	}
	var hosts []*env
	for i := range n {
		addr := netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)})
		name := fmt.Sprintf("h%d", i+1)
		hosts = append(hosts, newEnvTB(t, func(e *env) {
			underlay(t, lab, e.hostPath, name, addr)
			e.opts.Cluster = &ClusterOptions{KV: cluster.NewEtcdKV(etcd.Client(t)), NodeID: "node-" + name, NodeName: name,
				Advertise: addr, TTL: 1500 * time.Millisecond, Version: "test"}
			for _, f := range setup {
				f(e.opts.Cluster)
			}
		}))
		if err := hosts[i].s.Controller.EnsurePredefined(t.Context(), true); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { deleteClusterState(t, hosts) }) // before each host's own teardown
	return &clusterLab{hosts: hosts, lab: labPath}
}

// outsider is a machine on the hosts' LAN: a namespace on the lab bridge at
// 192.0.2.254/24, loopback up. It returns its path.
func (l *clusterLab) outsider(t testing.TB) string {
	t.Helper()
	lab, err := netns.Open(l.lab)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	path, _ := nstest.NewPinned(t)
	underlay(t, lab, path, "out", netip.MustParseAddr("192.0.2.254"))
	return path
}

// deleteClusterState removes every sandbox on every host, then the global networks
// (once, from the first host), and waits until no host lists them.
func deleteClusterState(t testing.TB, hosts []*env) {
	ctx := context.Background()
	for _, h := range hosts {
		for _, sb := range h.s.Controller.Sandboxes(ctx) {
			if err := h.s.Controller.DeleteSandbox(ctx, sb.ID, true); err != nil {
				t.Errorf("cleanup: deleting sandbox %s: %v", sb.Name, err)
			}
		}
	}
	for _, n := range hosts[0].s.Controller.Networks(ctx) {
		if n.Scope == "global" {
			if err := hosts[0].s.Controller.DeleteNetwork(ctx, n.ID); err != nil && !errdefs.Is(err, errdefs.KindNotFound) {
				t.Errorf("cleanup: deleting network %s: %v", n.Name, err)
			}
		}
	}
	for _, h := range hosts {
		if _, ok := nstest.Poll(5*time.Second, func() bool { return !hasGlobal(h) }); !ok {
			t.Errorf("cleanup: global networks still listed on a host")
		}
	}
}

func hasGlobal(h *env) bool {
	for _, n := range h.s.Controller.Networks(context.Background()) {
		if n.Scope == "global" {
			return true
		}
	}
	return false
}

// underlay connects the host namespace at hostPath to the lab bridge with addr/24.
func underlay(t testing.TB, lab *netns.Namespace, hostPath, name string, addr netip.Addr) {
	t.Helper()
	host, err := netns.Open(hostPath)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	br, err := lab.NL.LinkByName("lab0")
	if err != nil {
		t.Fatal(err)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lab-" + name, MasterIndex: br.Attrs().Index}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(host.Handle))}
	if err := lab.NL.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	if err := lab.NL.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	eth0, err := host.NL.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := host.NL.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := host.NL.LinkSetUp(eth0); err != nil {
		t.Fatal(err)
	}
}

func TestOverlayAcrossClusterHosts(t *testing.T) {
	hosts := clusterHosts(t, 3)
	ctx := t.Context()
	ov := hosts[0].network(cnm.NetworkSpec{Name: "ov", Driver: "overlay", Attachable: true})
	if ov.Scope != "global" || len(ov.VNIs) != 1 || ov.VNIs[0] != 4096 {
		t.Fatalf("overlay created as %+v", ov)
	}
	for _, h := range hosts[1:] {
		var err error
		if _, ok := nstest.Poll(5*time.Second, func() bool {
			var n cnm.Network
			n, err = h.s.Controller.Network(ctx, "ov")
			return err == nil && n.ID == ov.ID && n.Scope == "global"
		}); !ok {
			t.Fatalf("network ov not seen on another host: %v", err)
		}
	}
	// Lazy extension: no overlay devices before a local endpoint.
	if got := strings.Join(links(t, hosts[2].hostPath), " "); strings.Contains(got, "ovbr") {
		t.Fatalf("host 3 has overlay devices with no endpoint: %s", got)
	}
	web := hosts[0].sandbox("web", "ov")
	cli := hosts[1].sandbox("cli", "ov")
	webAddr := hosts[0].addr("web", "ov", false)
	listen(t, web.Key)
	// By address and by name, across hosts, through the embedded DNS.
	if err := within(5*time.Second, func() error { return dialEcho(cli.Key, webAddr, time.Second) }); err != nil {
		t.Fatalf("TCP from host 2 to host 1's sandbox %s: %v", webAddr, err)
	}
	addrs, err := lookup(t, hosts[1], cli, "web")
	if err != nil || len(addrs) != 1 || addrs[0] != webAddr.String() {
		t.Fatalf("web resolved on host 2 as %v, %v; want %s", addrs, err, webAddr)
	}
	// The overlay-only sandbox got the gateway bridge for its way out.
	if got := strings.Join(links(t, web.Key), " "); !strings.Contains(got, "eth1") {
		t.Fatalf("overlay-only sandbox links: %s (want a gateway bridge interface)", got)
	}
	// Deleting is refused on any host while an endpoint exists, naming its node.
	if err := hosts[2].s.Controller.DeleteNetwork(ctx, "ov"); !errdefs.Is(err, errdefs.KindForbidden) || !strings.Contains(err.Error(), "h1") {
		t.Fatalf("delete on host 3 while h1 and h2 have endpoints: %v", err)
	}
	// The sandbox leaves: its name stops resolving on host 2.
	if err := hosts[0].s.Controller.DeleteSandbox(ctx, "web", true); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "web to stop resolving on host 2 after it was removed", 5*time.Second, func() bool {
		_, err := lookup(t, hosts[1], cli, "web")
		return err != nil
	})
}

// BenchmarkOverlayConvergence: from Connect returning on host 1 until host 3's
// sandbox resolves the new sandbox's name through its embedded DNS and reaches it
// by TCP (the overlay issue's goal: p50 ≤ 10 ms, p99 ≤ 30 ms). Also reports the
// connect itself on a global network (goal ≤ 5 ms p50).
func BenchmarkOverlayConvergence(b *testing.B) {
	hosts := clusterHosts(b, 3)
	ctx := b.Context()
	hosts[0].network(cnm.NetworkSpec{Name: "ov", Driver: "overlay", Attachable: true})
	waitNetwork(b, hosts[2], "ov")
	probe := hosts[2].sandbox("probe", "ov")
	var conn, dnsLat, tcpLat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		name := fmt.Sprintf("s%d", i)
		sb, err := hosts[0].s.Controller.CreateSandbox(ctx, cnm.SandboxSpec{Name: name})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		ep, err := hosts[0].s.Controller.Connect(ctx, "ov", name, cnm.EndpointSpec{})
		if err != nil {
			b.Fatal(err)
		}
		conn = append(conn, time.Since(start))
		done := time.Now()
		for {
			if got, err := resolveOnce(probe.Key, name); err == nil && got == ep.Addr4.Addr().String() {
				break
			}
			if time.Since(done) > 5*time.Second {
				b.Fatalf("%s never resolved on host 3", name)
			}
		}
		dnsLat = append(dnsLat, time.Since(done))
		b.StopTimer()
		listen(b, sb.Key)
		b.StartTimer()
		done = time.Now()
		for dialEcho(probe.Key, ep.Addr4.Addr(), 50*time.Millisecond) != nil {
			if time.Since(done) > 5*time.Second {
				b.Fatalf("%s never reachable from host 3", name)
			}
		}
		tcpLat = append(tcpLat, time.Since(done))
	}
	b.StopTimer()
	report(b, "connect", conn)
	report(b, "dns", dnsLat)
	report(b, "tcp", tcpLat)
}

func report(b *testing.B, what string, lat []time.Duration) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	at := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(at(0.5), what+"-p50-ms")
	b.ReportMetric(at(0.99), what+"-p99-ms")
}

func waitNetwork(t testing.TB, h *env, name string) {
	t.Helper()
	nstest.Eventually(t, "network "+name+" to be seen", 5*time.Second, func() bool {
		_, err := h.s.Controller.Network(t.Context(), name)
		return err == nil
	})
}

// resolveOnce asks the embedded DNS in the namespace at key for name's A record.
func resolveOnce(key, name string) (string, error) {
	ns, err := netns.Open(key)
	if err != nil {
		return "", err
	}
	defer ns.Close()
	var c net.Conn
	if err := ns.Do(func() (err error) { c, err = net.DialTimeout("udp", "127.0.0.11:53", time.Second); return }); err != nil {
		return "", err
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	dc := &dns.Conn{Conn: c}
	_ = c.SetDeadline(time.Now().Add(10 * time.Millisecond)) // a name not yet known is forwarded upstream (unreachable here): ask again
	if err := dc.WriteMsg(m); err != nil {
		return "", err
	}
	r, err := dc.ReadMsg()
	if err != nil {
		return "", err
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String(), nil
		}
	}
	return "", fmt.Errorf("no answer")
}

// TestOverlayIsolationInternalAndIPv6 across two clustered hosts: two overlays do not
// reach each other while each works; an --internal overlay talks across hosts but gets
// no gateway bridge; a dual-stack overlay carries TCP over IPv6 across hosts.
func TestOverlayIsolationInternalAndIPv6(t *testing.T) {
	hosts := clusterHosts(t, 2)
	h1, h2 := hosts[0], hosts[1]
	h1.network(cnm.NetworkSpec{Name: "ova", Driver: "overlay", Attachable: true})
	h1.network(cnm.NetworkSpec{Name: "ovb", Driver: "overlay", Attachable: true})
	h1.network(cnm.NetworkSpec{Name: "inner", Driver: "overlay", Attachable: true, Internal: true})
	h1.network(cnm.NetworkSpec{Name: "ov6", Driver: "overlay", Attachable: true, EnableIPv6: true})
	for _, n := range []string{"ova", "ovb", "inner", "ov6"} {
		waitNetwork(t, h2, n)
	}
	a1, b1, i1, s1 := h1.sandbox("a1", "ova"), h1.sandbox("b1", "ovb"), h1.sandbox("i1", "inner"), h1.sandbox("s1", "ov6")
	a2, i2, s2 := h2.sandbox("a2", "ova"), h2.sandbox("i2", "inner"), h2.sandbox("s2", "ov6")
	for _, sb := range []cnm.Sandbox{a2, i2, s2} {
		listen(t, sb.Key)
	}
	reach := func(from cnm.Sandbox, to netip.Addr) error {
		return within(5*time.Second, func() error { return dialEcho(from.Key, to, time.Second) })
	}
	if err := reach(a1, h2.addr("a2", "ova", false)); err != nil {
		t.Fatalf("same overlay across hosts: %v", err)
	}
	if err := dialEcho(b1.Key, h2.addr("a2", "ova", false), 700*time.Millisecond); err == nil {
		t.Fatal("a sandbox on overlay ovb reached one on overlay ova")
	}
	if err := reach(i1, h2.addr("i2", "inner", false)); err != nil {
		t.Fatalf("internal overlay across hosts: %v", err)
	}
	if got := strings.Join(links(t, i1.Key), " "); got != "eth0 lo" {
		t.Fatalf("internal-only sandbox has %s (want no gateway bridge interface)", got)
	}
	if got := strings.Join(links(t, a1.Key), " "); got != "eth0 eth1 lo" {
		t.Fatalf("overlay-only sandbox has %s (want the gateway bridge as eth1)", got)
	}
	v6 := h2.addr("s2", "ov6", true)
	if !v6.Is6() {
		t.Fatalf("s2 has no IPv6 address on ov6: %v", v6)
	}
	if err := reach(s1, v6); err != nil {
		t.Fatalf("TCP over IPv6 across hosts to %s: %v", v6, err)
	}
	// The global IPAM refuses a second overlay with an overlapping subnet outright.
	if _, err := h2.s.Controller.CreateNetwork(t.Context(), cnm.NetworkSpec{Name: "dup", Driver: "overlay",
		IPAM: []cnm.PoolSpec{{Subnet: h1.addrPrefix("a1", "ova")}}}); !errdefs.Is(err, errdefs.KindForbidden) {
		t.Fatalf("overlay with ova's subnet: %v, want Forbidden", err)
	}
}

// addrPrefix is the subnet of the sandbox's IPv4 address on network net.
func (e *env) addrPrefix(sb, net string) netip.Prefix {
	e.t.Helper()
	eps, err := e.s.Controller.SandboxEndpoints(e.t.Context(), sb)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, ep := range eps {
		if n, _ := e.s.Controller.Network(e.t.Context(), ep.NetworkID); n.Name == net {
			return ep.Addr4.Masked()
		}
	}
	e.t.Fatalf("%s is not on %s", sb, net)
	return netip.Prefix{}
}

// TestOverlayOnTheWire: between clustered hosts an overlay's traffic is VXLAN on the
// underlay: UDP from one host's address to the other's, to the configured port (4790
// here), with the network's VNI, carrying the sandboxes' frames; no frame of the
// overlay's subnet crosses the underlay bare.
func TestOverlayOnTheWire(t *testing.T) {
	const port = 4790
	l := newClusterLab(t, 2, func(o *ClusterOptions) { o.VXLANPort = port })
	h1, h2 := l.hosts[0], l.hosts[1]
	ov := h1.network(cnm.NetworkSpec{Name: "ov", Driver: "overlay", Attachable: true})
	waitNetwork(t, h2, "ov")
	a := h1.sandbox("a", "ov")
	h2.sandbox("b", "ov")
	listen(t, h2.sandboxKey("b"))
	b, subnet := h2.addr("b", "ov", false), h2.addrPrefix("b", "ov")
	lab, err := netns.Open(l.lab)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	hosts := map[netip.Addr]bool{netip.MustParseAddr("192.0.2.1"): true, netip.MustParseAddr("192.0.2.2"): true}
	var tunnelled, bare int
	var stray []string
	stop := netlab.Capture(t, lab, "lab-h2", func(f []byte) {
		osrc, odst, _, _, _ := netlab.IPv4(f)
		if vni, inner, ok := netlab.VXLAN(f, port); ok {
			src, dst, _, _, ok := netlab.IPv4(inner)
			if vni == ov.VNIs[0] && ok && subnet.Contains(netip.AddrFrom4(src)) && subnet.Contains(netip.AddrFrom4(dst)) &&
				hosts[netip.AddrFrom4(osrc)] && hosts[netip.AddrFrom4(odst)] && osrc != odst {
				tunnelled++
			} else if ok {
				stray = append(stray, fmt.Sprintf("VNI %d %v->%v in %v->%v", vni, netip.AddrFrom4(src), netip.AddrFrom4(dst),
					netip.AddrFrom4(osrc), netip.AddrFrom4(odst)))
			}
			return
		}
		if subnet.Contains(netip.AddrFrom4(osrc)) || subnet.Contains(netip.AddrFrom4(odst)) {
			bare++
		}
	})
	if err := within(5*time.Second, func() error { return dialEcho(a.Key, b, time.Second) }); err != nil {
		t.Fatalf("TCP across hosts: %v", err)
	}
	stop()
	if tunnelled == 0 || bare > 0 || len(stray) > 0 {
		t.Fatalf("on the underlay: %d VXLAN packets to port %d with VNI %d between the hosts, %d bare packets of %s, other VXLAN: %v",
			tunnelled, port, ov.VNIs[0], bare, subnet, stray)
	}
	t.Logf("%d VXLAN packets, VNI %d, UDP port %d", tunnelled, ov.VNIs[0], port)
}

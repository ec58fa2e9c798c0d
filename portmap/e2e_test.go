package portmap_test

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/firewall"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/portmap"
)

// publisher wires the mechanisms the way the bridge driver will: the
// allocator picks host ports, the firewall DNATs them, the proxy serves
// loopback.
type publisher struct {
	t     testing.TB
	alloc *portmap.Allocator
	fw    *firewall.Firewall
	proxy *portmap.Proxy
}

func newPublisher(t testing.TB, host *netns.Namespace) *publisher {
	t.Helper()
	ctx := t.Context()
	fw, err := firewall.New(ctx, firewall.Options{NetNS: host.Handle})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw.Close() })
	proxy := portmap.NewProxy(host, portmap.ProxyOptions{UDPIdleTimeout: 5 * time.Second})
	if err := proxy.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })
	if err := fw.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return &publisher{t: t, alloc: portmap.NewAllocator(portmap.NamespaceHost(host), nil), fw: fw, proxy: proxy}
}

// publish allocates specs for owner and programs firewall and proxy,
// rolling back on error.
func (p *publisher) publish(owner string, ip4, ip6 string, specs ...string) ([]portmap.Binding, error) {
	p.t.Helper()
	ctx := p.t.Context()
	var all []portmap.Spec
	for _, s := range specs {
		sp, err := portmap.ParseSpec(s)
		if err != nil {
			p.t.Fatal(err)
		}
		all = append(all, sp...)
	}
	bs, err := p.alloc.Allocate(ctx, owner, all, addr(ip4), addr(ip6), netip.Addr{})
	if err != nil {
		return nil, err
	}
	if err = p.fw.SetPorts(ctx, owner, toFirewall(bs)); err == nil {
		err = p.proxy.Set(ctx, owner, bs)
	}
	if err != nil {
		p.unpublish(owner)
		return nil, err
	}
	return bs, nil
}

func (p *publisher) unpublish(owner string) {
	p.t.Helper()
	p.proxy.Remove(owner)
	if err := p.fw.RemovePorts(p.t.Context(), owner); err != nil {
		p.t.Fatal(err)
	}
	p.alloc.Release(owner)
}

func addr(s string) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	return netip.MustParseAddr(s)
}

// toFirewall is the conversion the caller does between the packages.
func toFirewall(bs []portmap.Binding) []firewall.PortBinding {
	out := make([]firewall.PortBinding, len(bs))
	for i, b := range bs {
		out[i] = firewall.PortBinding{HostIP: b.HostIP, HostPort: b.HostPort, Proto: string(b.Proto),
			ContainerIP: b.ContainerIP, ContainerPort: b.ContainerPort}
	}
	return out
}

// topology is the lab every published-port test uses.
type topology struct {
	*lab
	pub             *publisher
	out, c1, c2, c3 *netns.Namespace
}

const (
	c1v4, c1v6 = "192.0.2.2", "fd00:a::2"     // the published container, bridge br-a
	c2v4, c2v6 = "192.0.2.3", "fd00:a::3"     // its neighbour on br-a
	c3v4, c3v6 = "192.0.2.130", "fd00:b::130" // a container on br-b
	gwA4, gwA6 = "192.0.2.1", "fd00:a::1"
)

func newTopology(t *testing.T, brNetfilter bool) *topology {
	l := newLab(t, brNetfilter)
	l.Bridge("br-a", gwA4+"/25", gwA6+"/64")
	l.Bridge("br-b", "192.0.2.129/25", "fd00:b::1/64")
	top := &topology{lab: l}
	top.c1 = l.peer("va1", "br-a", c1v4+"/25", c1v6+"/64", gwA4, gwA6)
	top.c2 = l.peer("va2", "br-a", c2v4+"/25", c2v6+"/64", gwA4, gwA6)
	top.c3 = l.peer("vb3", "br-b", c3v4+"/25", c3v6+"/64", "192.0.2.129", "fd00:b::1")
	top.out = l.outside
	for name, ns := range map[string]*netns.Namespace{"c1": top.c1, "c3": top.c3} {
		serveTCP(t, ns, name, 80)
		serveTCP(t, ns, name, 81)
		serveUDP(t, ns, name, 53)
	}
	l.reachable(l.Host, hp(c1v4, 80), hp(c1v6, 80), hp(c3v4, 80), hp(c3v6, 80))
	top.pub = newPublisher(t, l.Host)
	for _, b := range []firewall.Bridge{
		{Name: "br-a", Owner: "net-a", Subnets4: nstest.Prefixes("192.0.2.0/25"), Subnets6: nstest.Prefixes("fd00:a::/64"), ICC: true, Masquerade: true},
		{Name: "br-b", Owner: "net-b", Subnets4: nstest.Prefixes("192.0.2.128/25"), Subnets6: nstest.Prefixes("fd00:b::/64"), ICC: true, Masquerade: true},
	} {
		if err := top.pub.fw.SetBridge(t.Context(), b); err != nil {
			t.Fatal(err)
		}
	}
	return top
}

func hp(host string, port uint16) string { return net.JoinHostPort(host, fmt.Sprint(port)) }

// TestPublishedPortsReachable publishes ports of c1 and reaches them every
// way a user would, with br_netfilter on (the kernel default) and off.
func TestPublishedPortsReachable(t *testing.T) {
	for _, brnf := range []bool{true, false} {
		t.Run(fmt.Sprintf("br_netfilter=%v", brnf), func(t *testing.T) {
			t.Parallel()
			testReachable(t, newTopology(t, brnf))
		})
	}
}

func testReachable(t *testing.T, top *topology) {
	bs, err := top.pub.publish("c1", c1v4, c1v6, "8080:80", "5353:53/udp", "9000-9001:80-81", "0:80")
	if err != nil {
		t.Fatal(err)
	}
	eph := bs[len(bs)-1].HostPort
	gwA := "192.0.2.129" // c3 reaches the host at its own gateway too
	type path struct {
		name       string
		from       *netns.Namespace
		proto, to  string
		wantSource string // the client address c1 sees
	}
	paths := []path{
		{"outside, IPv4", top.out, "tcp", hp(hostV4, 8080), outV4},
		{"outside, IPv6", top.out, "tcp", hp(hostV6, 8080), outV6},
		{"outside, UDP IPv4", top.out, "udp", hp(hostV4, 5353), outV4},
		{"outside, UDP IPv6", top.out, "udp", hp(hostV6, 5353), outV6},
		{"outside, range 1", top.out, "tcp", hp(hostV4, 9000), outV4},
		{"outside, range 2", top.out, "tcp", hp(hostV6, 9001), outV6},
		{"outside, ephemeral", top.out, "tcp", hp(hostV4, eph), outV4},
		{"host, own address IPv4", top.Host, "tcp", hp(hostV4, 8080), hostV4},
		{"host, own address IPv6", top.Host, "tcp", hp(hostV6, 8080), hostV6},
		{"host, UDP own address", top.Host, "udp", hp(hostV4, 5353), hostV4},
		{"host, 127.0.0.1 (proxy)", top.Host, "tcp", hp("127.0.0.1", 8080), gwA4},
		{"host, ::1 (proxy)", top.Host, "tcp", hp("::1", 8080), gwA6},
		{"host, UDP 127.0.0.1 (proxy)", top.Host, "udp", hp("127.0.0.1", 5353), gwA4},
		{"host, UDP ::1 (proxy)", top.Host, "udp", hp("::1", 5353), gwA6},
		{"hairpin: neighbour via host address", top.c2, "tcp", hp(hostV4, 8080), gwA4},
		{"hairpin: neighbour via host address, IPv6", top.c2, "tcp", hp(hostV6, 8080), gwA6},
		{"hairpin: neighbour via its gateway", top.c2, "tcp", hp(gwA4, 8080), gwA4},
		{"hairpin: neighbour, UDP", top.c2, "udp", hp(hostV4, 5353), gwA4},
		{"hairpin: the container itself", top.c1, "tcp", hp(hostV4, 8080), gwA4},
		{"other bridge", top.c3, "tcp", hp(hostV4, 8080), c3v4},
		{"other bridge, IPv6", top.c3, "tcp", hp(hostV6, 8080), c3v6},
		{"other bridge, via its gateway", top.c3, "tcp", hp(gwA, 8080), c3v4},
	}
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			want := "c1 " + p.wantSource
			if got := ask(t, p.from, p.proto, p.to); got != want {
				t.Errorf("%s %s: got %q, want %q", p.proto, p.to, got, want)
			}
		})
	}
	t.Run("unpublished port of the container stays closed", func(t *testing.T) {
		// Controls on the same path (outside → host → br-a → c1:80): published, it
		// answers, and the host itself reaches c1:80 directly; so the failure below is
		// the firewall, not a dead route or server.
		if got := ask(t, top.out, "tcp", hp(hostV4, 8080)); got != "c1 "+outV4 {
			t.Fatalf("published path to c1:80: %q", got)
		}
		if got := ask(t, top.Host, "tcp", hp(c1v4, 80)); got != "c1 "+gwA4 {
			t.Fatalf("host to c1:80 directly: %q", got)
		}
		if got := ask(t, top.out, "tcp", hp(c1v4, 80)); got != "" {
			t.Errorf("reached the container directly: %q", got)
		}
	})
}

// TestConflictsRollBack: a second publisher of a taken port fails with
// Docker's words, keeps nothing, and the first keeps working.
func TestConflictsRollBack(t *testing.T) {
	t.Parallel()
	top := newTopology(t, true)
	if _, err := top.pub.publish("c1", c1v4, c1v6, "8080:80"); err != nil {
		t.Fatal(err)
	}
	_, err := top.pub.publish("c3", c3v4, c3v6, "7070:80", "8080:80")
	if !errdefs.Is(err, errdefs.KindConflict) || err.Error() != "Bind for 0.0.0.0:8080 failed: port is already allocated" {
		t.Fatalf("err = %v, want Docker's conflict", err)
	}
	if got := ask(t, top.out, "tcp", hp(hostV4, 7070)); got != "" {
		t.Errorf("7070 of the failed request is published: %q", got)
	}
	if got := ask(t, top.out, "tcp", hp(hostV4, 8080)); got != "c1 "+outV4 {
		t.Errorf("the first publisher broke: %q", got)
	}
	// A port held by another process on the host conflicts too.
	var ln net.Listener
	top.Must(top.Host.Do(func() (err error) { ln, err = net.Listen("tcp4", "0.0.0.0:6060"); return err }))
	defer ln.Close()
	_, err = top.pub.publish("c3", c3v4, c3v6, "6060:80")
	if err == nil || err.Error() != "Bind for 0.0.0.0:6060 failed: port is already allocated" {
		t.Errorf("port bound on the host: %v", err)
	}
	// The firewall refuses a taken port on its own as well.
	err = top.pub.fw.SetPorts(t.Context(), "c3", []firewall.PortBinding{{HostIP: addr("0.0.0.0"), HostPort: 8080, Proto: "tcp", ContainerIP: addr(c3v4), ContainerPort: 80}})
	if !errdefs.Is(err, errdefs.KindConflict) {
		t.Errorf("firewall SetPorts of a taken port: %v", err)
	}
}

// TestUnpublishStopsTrafficAndFlushesUDP: removal closes every path, and
// a UDP client that keeps its socket reaches the new owner of the port at
// once (its stale conntrack entry is gone).
func TestUnpublishStopsTrafficAndFlushesUDP(t *testing.T) {
	t.Parallel()
	top := newTopology(t, true)
	if _, err := top.pub.publish("c1", c1v4, c1v6, "8080:80", "5353:53/udp"); err != nil {
		t.Fatal(err)
	}
	var udp net.Conn
	top.Must(top.out.Do(func() (err error) { udp, err = net.Dial("udp", hp(hostV4, 5353)); return err }))
	defer udp.Close()
	if got := roundTrip(udp); got != "c1 "+outV4 {
		t.Fatalf("before: %q", got)
	}
	top.pub.unpublish("c1")
	for _, p := range []struct {
		ns        *netns.Namespace
		proto, to string
	}{
		{top.out, "tcp", hp(hostV4, 8080)}, {top.out, "tcp", hp(hostV6, 8080)},
		{top.Host, "tcp", hp("127.0.0.1", 8080)}, {top.Host, "tcp", hp("::1", 8080)},
		{top.c2, "tcp", hp(hostV4, 8080)}, {top.out, "udp", hp(hostV4, 5353)},
	} {
		if got := ask(t, p.ns, p.proto, p.to); got != "" {
			t.Errorf("%s %s still answers after removal: %q", p.proto, p.to, got)
		}
	}
	if _, err := top.pub.publish("c3", c3v4, c3v6, "5353:53/udp"); err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(udp); got != "c3 "+outV4 {
		t.Errorf("same UDP client after remapping: %q, want c3", got)
	}
}

// TestFirewallHealsWithTraffic: after `nft flush ruleset` new connections
// work again, and an established one survives. How fast is measured by the
// firewall's BenchmarkHeal; the deadline here is only for correctness.
func TestFirewallHealsWithTraffic(t *testing.T) {
	t.Parallel()
	top := newTopology(t, true)
	if _, err := top.pub.publish("c1", c1v4, c1v6, "8080:80"); err != nil {
		t.Fatal(err)
	}
	var est net.Conn
	top.Must(top.out.Do(func() (err error) { est, err = net.Dial("tcp", hp(hostV4, 8080)); return err }))
	defer est.Close()
	if got := roundTrip(est); got != "c1 "+outV4 {
		t.Fatalf("established connection: %q", got)
	}
	for _, cmd := range [][]string{{"flush", "ruleset"}, {"delete", "table", "inet", "pier"}, {"flush", "map", "inet", "pier", "portsany4"}} {
		// Let the connection go idle first: a delayed ACK sent while the table is gone
		// is not translated, and the host answers it with a reset. No firewall can
		// translate packets while its NAT rules do not exist; what must survive is the
		// connection's state, for the packets after the heal.
		quiesce(t, est)
		top.nft(cmd...)
		took := eventually(t, 5*time.Second, "c1 "+outV4, func() string { return ask(t, top.out, "tcp", hp(hostV4, 8080)) })
		t.Logf("nft %v: new connections work again after %v", cmd, took.Round(time.Millisecond))
		if got := roundTripWithin(est, 3*time.Second); got != "c1 "+outV4 {
			t.Errorf("after nft %v the established connection broke: %q", cmd, got)
		}
	}
}

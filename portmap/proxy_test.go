package portmap_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/portmap"
)

// proxyLab is a host namespace with one container on a bridge, serving
// TCP and UDP on port 80 and 53.
func proxyLab(t *testing.T) (*lab, *netns.Namespace) {
	l := newLab(t, false)
	l.Bridge("br-p", gwA4+"/25", gwA6+"/64")
	c := l.peer("vp1", "br-p", c1v4+"/25", c1v6+"/64", gwA4, gwA6)
	serveTCP(t, c, "c1", 80)
	serveUDP(t, c, "c1", 53)
	l.reachable(l.Host, hp(c1v4, 80), hp(c1v6, 80))
	return l, c
}

func bindings(port uint16, proto portmap.Proto, hosts ...string) []portmap.Binding {
	var out []portmap.Binding
	for _, h := range hosts {
		ctr := c1v4
		if netip.MustParseAddr(h).Is6() {
			ctr = c1v6
		}
		cport := uint16(80)
		if proto == portmap.UDP {
			cport = 53
		}
		out = append(out, portmap.Binding{HostIP: netip.MustParseAddr(h), HostPort: port, Proto: proto, ContainerIP: netip.MustParseAddr(ctr), ContainerPort: cport})
	}
	return out
}

// TestProxyLifecycle counts goroutines, so it does not run in parallel.
func TestProxyLifecycle(t *testing.T) {
	ctx := t.Context()
	l, _ := proxyLab(t)
	before := runtime.NumGoroutine()
	p := portmap.NewProxy(l.Host, portmap.ProxyOptions{UDPIdleTimeout: 200 * time.Millisecond})
	if err := p.Set(ctx, "c1", nil); err == nil {
		t.Error("Set before Start succeeded")
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// 0.0.0.0 and :: map to the loopbacks; a specific non-loopback address
	// and SCTP get no listener; 127.0.0.2 gets its own.
	bs := append(bindings(8080, portmap.TCP, "0.0.0.0", "::", "127.0.0.2", hostV4), bindings(5353, portmap.UDP, "0.0.0.0")...)
	bs = append(bs, portmap.Binding{HostIP: netip.IPv4Unspecified(), HostPort: 9, Proto: portmap.SCTP, ContainerIP: netip.MustParseAddr(c1v4), ContainerPort: 9})
	if err := p.Set(ctx, "c1", bs); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"127.0.0.1:8080", "[::1]:8080", "127.0.0.2:8080"} {
		if got := ask(t, l.Host, "tcp", to); got == "" {
			t.Errorf("tcp %s: no answer", to)
		}
	}
	if got := ask(t, l.Host, "tcp", hp(hostV4, 8080)); got != "" {
		t.Errorf("the proxy serves a non-loopback address: %q", got)
	}

	// An open TCP connection and a UDP flow.
	var tcp, udp net.Conn
	l.Must(l.Host.Do(func() (err error) { tcp, err = net.Dial("tcp", "127.0.0.1:8080"); return err }))
	defer tcp.Close()
	l.Must(l.Host.Do(func() (err error) { udp, err = net.Dial("udp", "127.0.0.1:5353"); return err }))
	defer udp.Close()
	if roundTrip(tcp) == "" || roundTrip(udp) == "" {
		t.Fatal("no answer")
	}
	// The flow is a socket in the host connected to the container; it is closed when
	// the flow times out, and a new datagram from the same client opens a new one.
	upstream := netip.AddrPortFrom(netip.MustParseAddr(c1v4), 53)
	if got := udpSockets(t, l.Host, upstream); len(got) != 1 {
		t.Fatalf("UDP flow sockets to %s: %v, want one", upstream, got)
	}
	eventually(t, 5*time.Second, "[]", func() string { return fmt.Sprint(udpSockets(t, l.Host, upstream)) })
	if roundTrip(udp) == "" {
		t.Error("no answer after the flow timed out")
	}
	if got := udpSockets(t, l.Host, upstream); len(got) != 1 {
		t.Errorf("UDP flow sockets to %s after a new datagram: %v, want one", upstream, got)
	}

	// Set keeps unchanged listeners (and their connections), closes the rest.
	if err := p.Set(ctx, "c1", bindings(8080, portmap.TCP, "0.0.0.0")); err != nil {
		t.Fatal(err)
	}
	if roundTrip(tcp) == "" {
		t.Error("an unchanged listener lost its connection")
	}
	if got := ask(t, l.Host, "tcp", "[::1]:8080"); got != "" {
		t.Errorf("removed listener still answers: %q", got)
	}
	// A listener that is taken fails Set and leaves the owner's others.
	var other net.Listener
	l.Must(l.Host.Do(func() (err error) { other, err = net.Listen("tcp", "127.0.0.1:7070"); return err }))
	defer other.Close()
	err := p.Set(ctx, "c1", append(bindings(8080, portmap.TCP, "0.0.0.0"), bindings(7070, portmap.TCP, "0.0.0.0")...))
	if err == nil {
		t.Error("Set on a taken loopback port succeeded")
	}
	if roundTrip(tcp) == "" {
		t.Error("a failed Set broke an unchanged listener")
	}

	// Remove closes listeners and their connections.
	p.Remove("c1")
	if roundTrip(tcp) != "" {
		t.Error("Remove left a connection open")
	}
	if err := p.Set(ctx, "c2", bs); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := ask(t, l.Host, "tcp", "127.0.0.1:8080"); got != "" {
		t.Errorf("closed proxy answers: %q", got)
	}
	waitGoroutines(t, before, "goroutines after Close")
}

// udpSockets returns the local addresses of the IPv4 UDP sockets in ns connected to
// remote, read from the kernel's socket table (/proc/net/udp of ns).
func udpSockets(t *testing.T, ns *netns.Namespace, remote netip.AddrPort) []string {
	t.Helper()
	var data []byte
	var err error
	nstest.Do(t, ns.Handle, func() { data, err = os.ReadFile("/proc/thread-self/net/udp") })
	if err != nil {
		t.Fatal(err)
	}
	a := remote.Addr().As4()
	want := fmt.Sprintf("%08X:%04X", binary.LittleEndian.Uint32(a[:]), remote.Port())
	var out []string
	for _, line := range strings.Split(string(data), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 2 && f[2] == want {
			out = append(out, f[1])
		}
	}
	return out
}

// waitGoroutines waits until at most n goroutines run.
func waitGoroutines(t *testing.T, n int, what string) {
	t.Helper()
	if _, ok := nstest.Poll(2*time.Second, func() bool { return runtime.NumGoroutine() <= n }); !ok {
		buf := make([]byte, 1<<16)
		t.Fatalf("%s: %d goroutines, want <= %d\n%s", what, runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
	}
}

// TestNamespaceHost probes in the given namespace, not in the test's.
func TestNamespaceHost(t *testing.T) {
	t.Parallel()
	ns := netlab.NewNS(t)
	if err := ns.SetSysctl("net/ipv4/ip_local_port_range", "50000 50001"); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:50000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a := portmap.NewAllocator(portmap.NamespaceHost(ns), nil)
	c := netip.MustParseAddr("192.0.2.2")
	spec := []portmap.Spec{{ContainerPort: 80, Proto: portmap.TCP}}
	bs, err := a.Allocate(t.Context(), "x", spec, c, netip.Addr{}, netip.Addr{})
	if err != nil || bs[0].HostPort != 50001 {
		t.Fatalf("got %v, %v; want 50001 (the namespace's range, 50000 held there)", bs, err)
	}
	_, err = a.Allocate(t.Context(), "y", spec, c, netip.Addr{}, netip.Addr{})
	if !errdefs.Is(err, errdefs.KindUnavailable) {
		t.Errorf("exhausted range: %v", err)
	}
	_, err = a.Allocate(t.Context(), "z", []portmap.Spec{{HostIP: netip.MustParseAddr("203.0.113.9"), HostPort: 80, ContainerPort: 80, Proto: portmap.TCP}}, c, netip.Addr{}, netip.Addr{})
	if !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Errorf("address not on the host: %v", err)
	}
	// UDP and SCTP probes work (SCTP: treated as free if the kernel lacks it).
	for _, proto := range []portmap.Proto{portmap.UDP, portmap.SCTP} {
		if _, err := a.Allocate(t.Context(), "p-"+string(proto), []portmap.Spec{{HostPort: 7000, ContainerPort: 80, Proto: proto}}, c, netip.Addr{}, netip.Addr{}); err != nil {
			t.Errorf("%s: %v", proto, err)
		}
	}
}

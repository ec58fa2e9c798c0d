package wg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// TestTunnel opens tunnels on two hosts and carries UDP and a 1 MiB TCP transfer from
// A's tunnel namespace to B's address through them, both ways.
func TestTunnel(t *testing.T) {
	_, hs := newHosts(t, 2)
	a, b := hs[0], hs[1]
	if !kernelHasWireGuard(t) && a.tunnel.Mode() != Userspace {
		t.Errorf("mode %q on a kernel without wireguard, want userspace", a.tunnel.Mode())
	}
	t.Logf("mode %s", a.tunnel.Mode())
	assertSocketIn(t, a)
	mesh(t, a, b)
	for _, h := range hs {
		udpEcho(t, h.tunNS, h.addr)
		tcpEchoServer(t, h.tunNS, h.addr)
	}
	if err := echo(t, a.tunNS, b.addr, []byte("hello B")); err != nil {
		t.Fatal(err)
	}
	if err := echo(t, b.tunNS, a.addr, []byte("hello A")); err != nil {
		t.Fatal(err)
	}
	if err := tcpRoundTrip(t, a.tunNS, b.addr, 1<<20); err != nil {
		t.Fatal(err)
	}
	st, err := a.tunnel.Peers(t.Context())
	if err != nil || len(st) != 1 || st[0].PublicKey != b.tunnel.PublicKey() || st[0].LastHandshake.IsZero() || st[0].RxBytes < 1<<20 {
		t.Errorf("A's peers after traffic: %+v, %v", st, err)
	}
}

// assertSocketIn checks that the tunnel's UDP port is taken in h's socket namespace and
// free in its tunnel namespace.
func assertSocketIn(t *testing.T, h *host) {
	t.Helper()
	for _, c := range []struct {
		ns    *netns.Namespace
		taken bool
	}{{h.ns, true}, {h.tunNS, false}} {
		var err error
		nstest.Do(t, c.ns.Handle, func() {
			var pc net.PacketConn
			if pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", DefaultListenPort)); err == nil {
				pc.Close()
			}
		})
		if taken := errors.Is(err, syscall.EADDRINUSE); taken != c.taken {
			t.Errorf("UDP port %d in %s: bind error %v, want taken=%v", DefaultListenPort, c.ns.Path, err, c.taken)
		}
	}
}

// capture records the frames on the lab-side end of h's veth until stop is called.
type capture struct {
	mu     sync.Mutex
	frames [][]byte
	stop   func()
}

func startCapture(t *testing.T, l *netlab.Lab, h *host) *capture {
	c := &capture{}
	c.stop = netlab.Capture(t, l.Host, h.veth, func(f []byte) {
		c.mu.Lock()
		c.frames = append(c.frames, f)
		c.mu.Unlock()
	})
	return c
}

// check stops the capture and fails the test for a frame holding marker or an IPv4
// packet from or to from that is not WireGuard (UDP between port 51820s); it returns
// how many WireGuard packets it saw.
func (c *capture) check(t *testing.T, from netip.Addr, marker []byte) (wireguard int) {
	t.Helper()
	c.stop()
	for _, f := range c.frames {
		if bytes.Contains(f, marker) {
			t.Errorf("marker in a frame on the underlay: % x", f)
		}
		src, dst, proto, l4, ok := netlab.IPv4(f)
		if !ok || (src != from.As4() && dst != from.As4()) {
			continue
		}
		if proto != unix.IPPROTO_UDP || len(l4) < 8 || binary.BigEndian.Uint16(l4[0:2]) != DefaultListenPort || binary.BigEndian.Uint16(l4[2:4]) != DefaultListenPort {
			t.Errorf("not wireguard on the underlay: %v -> %v proto %d", netip.AddrFrom4(src), netip.AddrFrom4(dst), proto)
			continue
		}
		wireguard++
	}
	return wireguard
}

// TestOnTheWire sends a marker through the tunnel by UDP and TCP and checks that only
// WireGuard UDP crosses the underlay between the hosts and the marker never does.
func TestOnTheWire(t *testing.T) {
	l, hs := newHosts(t, 2)
	a, b := hs[0], hs[1]
	mesh(t, a, b)
	udpEcho(t, b.tunNS, b.addr)
	tcpEchoServer(t, b.tunNS, b.addr)
	cap := startCapture(t, l, a)
	marker := []byte("pier-wg-marker-5d41402abc4b2a76")
	if err := echo(t, a.tunNS, b.addr, marker); err != nil {
		t.Fatal(err)
	}
	c, err := netlab.Dial(t, a.tunNS, "tcp4", netip.AddrPortFrom(b.addr, 8).String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, bytes.Repeat(marker, 1000)); err != nil {
		t.Fatal(err)
	}
	if n := cap.check(t, a.addr, marker); n < 10 {
		t.Errorf("only %d wireguard packets captured", n)
	}
}

// TestFailClosed removes A's device (by Close, or by deleting the link behind the
// tunnel's back) and checks that a send to B from A's tunnel namespace fails with
// ENETUNREACH and nothing leaves A.
func TestFailClosed(t *testing.T) {
	for name, remove := range map[string]func(t *testing.T, h *host){
		"close": func(t *testing.T, h *host) {
			if err := h.tunnel.Close(); err != nil {
				t.Fatal(err)
			}
		},
		"delete link": func(t *testing.T, h *host) {
			l, err := h.tunNS.NL.LinkByName(DefaultName)
			if err == nil {
				err = h.tunNS.NL.LinkDel(l)
			}
			if err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			l, hs := newHosts(t, 2)
			a, b := hs[0], hs[1]
			mesh(t, a, b)
			udpEcho(t, b.tunNS, b.addr)
			tcpEchoServer(t, b.tunNS, b.addr)
			if err := echo(t, a.tunNS, b.addr, []byte("before")); err != nil {
				t.Fatal(err)
			}
			remove(t, a)
			cap := startCapture(t, l, a)
			marker := []byte("pier-wg-failclosed-marker")
			nstest.Eventually(t, "sends from A's tunnel namespace to fail", 5*time.Second, func() bool {
				return isUnreachable(echo(t, a.tunNS, b.addr, marker))
			})
			_, err := netlab.Dial(t, a.tunNS, "tcp4", netip.AddrPortFrom(b.addr, 8).String(), time.Second)
			if !isUnreachable(err) {
				t.Errorf("TCP dial after removal: %v, want ENETUNREACH", err)
			}
			if n := cap.check(t, a.addr, marker); n != 0 {
				t.Errorf("%d wireguard packets left A after its device was removed", n)
			}
			assertNoRoutes(t, a.tunNS)
		})
	}
}

// assertNoRoutes checks that the tunnel namespace routes nothing but local addresses.
func assertNoRoutes(t *testing.T, ns *netns.Namespace) {
	t.Helper()
	rs, err := ns.NL.RouteList(nil, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		t.Errorf("route left in the tunnel namespace: %v", r)
	}
}

func routeSet(t *testing.T, ns *netns.Namespace) map[string]bool {
	t.Helper()
	rs, err := ns.NL.RouteList(nil, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, r := range rs {
		if r.Dst != nil {
			out[r.Dst.String()] = true
		}
	}
	return out
}

func peerStatus(t *testing.T, tun *Tunnel, k Key) (PeerStatus, bool) {
	t.Helper()
	st, err := tun.Peers(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.PublicKey == k {
			return s, true
		}
	}
	return PeerStatus{}, false
}

// TestSetPeersDiff changes and then removes one of A's two peers: the other keeps its
// session (same handshake, an open TCP connection keeps working), and the removed
// peer's routes go.
func TestSetPeersDiff(t *testing.T) {
	_, hs := newHosts(t, 3)
	a, b, c := hs[0], hs[1], hs[2]
	mesh(t, a, b, c)
	for _, h := range hs[1:] {
		udpEcho(t, h.tunNS, h.addr)
		tcpEchoServer(t, h.tunNS, h.addr)
	}
	for _, h := range hs[1:] {
		if err := echo(t, a.tunNS, h.addr, []byte("hi")); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := netlab.Dial(t, a.tunNS, "tcp4", netip.AddrPortFrom(b.addr, 8).String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	before, _ := peerStatus(t, a.tunnel, b.tunnel.PublicKey())
	if before.LastHandshake.IsZero() {
		t.Fatal("no handshake with B")
	}
	stillB := func(step string) {
		t.Helper()
		if err := roundTrip(conn, randomBytes(t, 64<<10)); err != nil {
			t.Errorf("%s: TCP to B: %v", step, err)
		}
		now, ok := peerStatus(t, a.tunnel, b.tunnel.PublicKey())
		if !ok || !now.LastHandshake.Equal(before.LastHandshake) {
			t.Errorf("%s: B's session changed: handshake %v, was %v", step, now.LastHandshake, before.LastHandshake)
		}
	}

	cp := c.peer()
	cp.AllowedIPs = append(cp.AllowedIPs, netip.MustParsePrefix("198.51.100.0/24"))
	cp.Keepalive = 25 * time.Second
	if err := a.tunnel.SetPeers(t.Context(), []Peer{b.peer(), cp}); err != nil {
		t.Fatal(err)
	}
	if rs := routeSet(t, a.tunNS); !rs["198.51.100.0/24"] || !rs["192.0.2.13/32"] || !rs["192.0.2.12/32"] {
		t.Errorf("routes after changing C: %v", rs)
	}
	if s, _ := peerStatus(t, a.tunnel, c.tunnel.PublicKey()); s.Keepalive != 25*time.Second || len(s.AllowedIPs) != 2 {
		t.Errorf("C after the change: %+v", s)
	}
	stillB("after changing C")

	if err := a.tunnel.SetPeers(t.Context(), []Peer{b.peer()}); err != nil {
		t.Fatal(err)
	}
	if rs := routeSet(t, a.tunNS); rs["198.51.100.0/24"] || rs["192.0.2.13/32"] || !rs["192.0.2.12/32"] {
		t.Errorf("routes after removing C: %v", rs)
	}
	if _, ok := peerStatus(t, a.tunnel, c.tunnel.PublicKey()); ok {
		t.Error("C still a peer of A")
	}
	if err := echo(t, a.tunNS, c.addr, []byte("hi")); !isUnreachable(err) {
		t.Errorf("send to removed C: %v, want ENETUNREACH", err)
	}
	stillB("after removing C")
}

// TestOpenFails checks that a failed Open leaves nothing behind and that the tunnel
// namespace must not be the socket namespace.
func TestOpenFails(t *testing.T) {
	_, hs := newHosts(t, 1)
	h := hs[0]
	key, _ := GenerateKey()
	o := Options{TunnelNS: h.tunNS.Path, SocketNS: h.ns.Path, PrivateKey: key, Address: netip.PrefixFrom(h.addr, 32)}
	if _, err := Open(t.Context(), o); err == nil { // the name is taken by h's tunnel
		t.Fatal("second tunnel with the same name opened")
	}
	o.Name = "pierwg1"
	if !kernelHasWireGuard(t) {
		o.Mode = Kernel
		if _, err := Open(t.Context(), o); !errors.Is(err, errNoKernelWireGuard) || !errdefs.Is(err, errdefs.KindUnavailable) {
			t.Errorf("kernel mode without the module: %v", err)
		}
		o.Mode = Auto
	}
	o.SocketNS = h.tunNS.Path
	if _, err := Open(t.Context(), o); !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Fatal("tunnel with its socket in its own namespace opened")
	}
	links, err := h.tunNS.NL.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	if got := fmt.Sprint(names); got != "[lo "+DefaultName+"]" {
		t.Errorf("links in the tunnel namespace: %s", got)
	}
}

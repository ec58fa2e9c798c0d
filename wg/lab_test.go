package wg

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// host is one pier host of a test lab: its namespace on the underlay bridge (the
// socket namespace), its tunnel namespace, and its tunnel.
type host struct {
	ns     *netns.Namespace // on the underlay, eth0 with addr/24
	tunNS  *netns.Namespace // lo and the WireGuard device only
	veth   string           // eth0's other end, in the lab's host namespace
	addr   netip.Addr       // underlay address, also the device's address (/32)
	tunnel *Tunnel
}

// newHosts makes n hosts 192.0.2.11, .12, … on one bridge, each with an open tunnel
// (Auto mode) and no peers.
func newHosts(t testing.TB, n int) (*netlab.Lab, []*host) {
	t.Helper()
	l := netlab.New(t, netlab.Options{})
	l.Bridge("br0")
	hosts := make([]*host, n)
	for i := range hosts {
		h := &host{veth: fmt.Sprintf("vh%d", i), addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(11 + i)})}
		h.ns = l.Peer(h.veth, "br0", []string{h.addr.String() + "/24"}, nil)
		h.tunNS = netlab.NewNS(t)
		h.tunnel = openTunnel(t, h, Auto)
		hosts[i] = h
	}
	return l, hosts
}

func openTunnel(t testing.TB, h *host, mode Mode) *Tunnel {
	t.Helper()
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	tun, err := Open(t.Context(), Options{TunnelNS: h.tunNS.Path, SocketNS: h.ns.Path, PrivateKey: key,
		Address: netip.PrefixFrom(h.addr, 32), Mode: mode, Logger: nstest.Log(t, slog.LevelInfo)})
	if err != nil {
		t.Fatalf("opening tunnel on %s: %v", h.addr, err)
	}
	t.Cleanup(func() {
		if err := tun.Close(); err != nil {
			t.Errorf("closing tunnel: %v", err)
		}
	})
	return tun
}

// peer is h as its peers configure it.
func (h *host) peer() Peer {
	return Peer{PublicKey: h.tunnel.PublicKey(), Endpoint: netip.AddrPortFrom(h.addr, DefaultListenPort),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(h.addr, 32)}}
}

// mesh makes every host a peer of every other.
func mesh(t testing.TB, hosts ...*host) {
	t.Helper()
	for _, h := range hosts {
		var peers []Peer
		for _, o := range hosts {
			if o != h {
				peers = append(peers, o.peer())
			}
		}
		if err := h.tunnel.SetPeers(t.Context(), peers); err != nil {
			t.Fatal(err)
		}
	}
}

// kernelHasWireGuard probes, in a fresh namespace, whether this kernel can create a
// WireGuard link.
func kernelHasWireGuard(t testing.TB) bool {
	ns := netlab.NewNS(t)
	err := ns.NL.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "probe0"}})
	return err == nil
}

// udpEcho serves UDP echo on port 7 of addr in ns until the test ends.
func udpEcho(t testing.TB, ns *netns.Namespace, addr netip.Addr) {
	t.Helper()
	var pc net.PacketConn
	var err error
	nstest.Do(t, ns.Handle, func() { pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(addr, 7).String()) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

// dialUDP connects a UDP socket in ns to to. The error is the connect's: with no
// route it is ENETUNREACH.
func dialUDP(t testing.TB, ns *netns.Namespace, to netip.AddrPort) (*net.UDPConn, error) {
	t.Helper()
	var c *net.UDPConn
	var err error
	nstest.Do(t, ns.Handle, func() { c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to)) })
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// echo sends msg to the UDP echo server at to from ns and waits for it to come back,
// resending every 200 ms for up to 5 s (the first datagram may wait for a handshake).
func echo(t testing.TB, ns *netns.Namespace, to netip.Addr, msg []byte) error {
	t.Helper()
	c, err := dialUDP(t, ns, netip.AddrPortFrom(to, 7))
	if err != nil {
		return err
	}
	buf := make([]byte, len(msg)+1)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if _, err := c.Write(msg); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := c.Read(buf); err == nil && bytes.Equal(buf[:n], msg) {
			return nil
		}
	}
	return fmt.Errorf("no echo from %s", to)
}

// tcpEchoServer echoes every TCP connection to addr:8 in ns.
func tcpEchoServer(t testing.TB, ns *netns.Namespace, addr netip.Addr) {
	netlab.Serve(t, ns, netip.AddrPortFrom(addr, 8).String(), func(c net.Conn) {
		defer c.Close()
		_, _ = io.Copy(c, c)
	})
}

// tcpRoundTrip sends size random bytes over one TCP connection from ns to the echo
// server on to and checks they come back byte for byte.
func tcpRoundTrip(t testing.TB, ns *netns.Namespace, to netip.Addr, size int) error {
	t.Helper()
	c, err := netlab.Dial(t, ns, "tcp4", netip.AddrPortFrom(to, 8).String(), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	return roundTrip(c, randomBytes(t, size))
}

func roundTrip(c net.Conn, data []byte) error {
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		werr <- err
	}()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("reading echo: %w", err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	if !bytes.Equal(got, data) {
		return errors.New("echoed bytes differ")
	}
	return nil
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func isUnreachable(err error) bool { return errors.Is(err, syscall.ENETUNREACH) }

// Package netlab builds traffic labs for privileged tests: a fresh "host" network
// namespace with bridges, containers (one namespace each, attached by a veth) and an
// "outside" namespace behind an uplink, plus TCP listeners and dialers inside those
// namespaces, so a test can prove behaviour with real connections. Every namespace,
// handle and listener it makes is removed by t.Cleanup, also when the test fails.
//
// Only test files import it; it builds on nstest and never touches the machine's own
// namespace.
package netlab

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// Options selects what a lab sets up beyond IPv4 forwarding.
type Options struct {
	// IPv6 turns on IPv6 forwarding in the host and turns off duplicate address
	// detection in the host and every peer, so addresses are usable at once.
	IPv6 bool
	// Hairpin puts bridge ports in hairpin mode, as the bridge driver does so that a
	// container can reach its own published port through a host address.
	Hairpin bool
	// BridgeNetfilter makes bridged traffic in the host cross the inet hooks
	// (net.bridge.bridge-nf-call-ip{,6}tables = 1); without it they are set to 0.
	// Either way the lab needs the br_netfilter module, so that a lab never depends
	// on the machine's defaults.
	BridgeNetfilter bool
}

// Lab is a fresh host namespace that bridges and peers are added to.
type Lab struct {
	Host *netns.Namespace // pinned: Host.Path works with nsenter

	t    testing.TB
	opts Options
}

// New returns a lab with a fresh host namespace that forwards IPv4 (and IPv6 if asked).
func New(t testing.TB, opts Options) *Lab {
	t.Helper()
	nstest.Require(t, "root", "br_netfilter")
	l := &Lab{Host: NewNS(t), t: t, opts: opts}
	if opts.IPv6 {
		l.noDAD(l.Host)
	}
	v := map[bool]string{true: "1", false: "0"}[opts.BridgeNetfilter]
	l.Sysctl(l.Host, "net/bridge/bridge-nf-call-iptables", v)
	l.Sysctl(l.Host, "net/bridge/bridge-nf-call-ip6tables", v)
	l.Sysctl(l.Host, "net/ipv4/ip_forward", "1")
	if opts.IPv6 {
		l.Sysctl(l.Host, "net/ipv6/conf/all/forwarding", "1")
	}
	return l
}

// NewNS returns a fresh pinned namespace with loopback up; it is closed and unpinned
// when the test ends.
func NewNS(t testing.TB) *netns.Namespace {
	t.Helper()
	path, _ := nstest.NewPinned(t)
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Close() })
	lo, err := ns.NL.LinkByName("lo")
	if err == nil {
		err = ns.NL.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("lo up: %v", err)
	}
	return ns
}

// Must fails the test on err.
func (l *Lab) Must(err error) {
	l.t.Helper()
	if err != nil {
		l.t.Fatal(err)
	}
}

// Sysctl sets /proc/sys/<key> inside ns.
func (l *Lab) Sysctl(ns *netns.Namespace, key, val string) {
	l.t.Helper()
	l.Must(ns.SetSysctl(key, val))
}

// noDAD turns off duplicate address detection for interfaces created in ns from now
// on: link-local addresses are usable at once.
func (l *Lab) noDAD(ns *netns.Namespace) {
	l.t.Helper()
	l.Sysctl(ns, "net/ipv6/conf/default/accept_dad", "0")
	l.Sysctl(ns, "net/ipv6/conf/all/accept_dad", "0")
}

// Addr adds prefix to link through h, IPv6 without duplicate address detection.
func (l *Lab) Addr(h *netlink.Handle, link netlink.Link, prefix string) {
	l.t.Helper()
	p := netip.MustParsePrefix(prefix)
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	l.Must(h.AddrAdd(link, a))
}

// Bridge creates a bridge in the host with gateway prefixes.
func (l *Lab) Bridge(name string, gateways ...string) {
	l.t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	l.Must(l.Host.NL.LinkAdd(br))
	for _, g := range gateways {
		l.Addr(l.Host.NL, br, g)
	}
	l.Must(l.Host.NL.LinkSetUp(br))
}

// Peer creates a namespace joined to the host by a veth: hostSide in the host
// (enslaved to bridge if not empty), eth0 with the prefixes addrs inside, and a
// default route via each of gateways.
func (l *Lab) Peer(hostSide, bridge string, addrs, gateways []string) *netns.Namespace {
	l.t.Helper()
	ns := NewNS(l.t)
	if l.opts.IPv6 {
		l.noDAD(ns)
	}
	la := netlink.LinkAttrs{Name: hostSide}
	if bridge != "" {
		m, err := l.Host.NL.LinkByName(bridge)
		l.Must(err)
		la.MasterIndex = m.Attrs().Index
	}
	l.Must(l.Host.NL.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns.Handle)}))
	hl, err := l.Host.NL.LinkByName(hostSide)
	l.Must(err)
	if bridge != "" && l.opts.Hairpin {
		l.Must(l.Host.NL.LinkSetHairpin(hl, true))
	}
	l.Must(l.Host.NL.LinkSetUp(hl))
	eth0, err := ns.NL.LinkByName("eth0")
	l.Must(err)
	for _, a := range addrs {
		l.Addr(ns.NL, eth0, a)
	}
	l.Must(ns.NL.LinkSetUp(eth0))
	for _, gw := range gateways {
		l.Must(ns.NL.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP(gw)}))
	}
	return ns
}

// Uplink creates the outside namespace: a peer behind the veth hostSide (not on a
// bridge) with outsideAddrs, whose default routes go via hostAddrs, which the host
// side gets.
func (l *Lab) Uplink(hostSide string, hostAddrs, outsideAddrs []string) *netns.Namespace {
	l.t.Helper()
	var gws []string
	for _, a := range hostAddrs {
		gws = append(gws, netip.MustParsePrefix(a).Addr().String())
	}
	out := l.Peer(hostSide, "", outsideAddrs, gws)
	up, err := l.Host.NL.LinkByName(hostSide)
	l.Must(err)
	for _, a := range hostAddrs {
		l.Addr(l.Host.NL, up, a)
	}
	return out
}

// Serve listens on TCP addr in ns until the test ends and runs handle on each
// connection in its own goroutine.
func Serve(t testing.TB, ns *netns.Namespace, addr string, handle func(net.Conn)) {
	t.Helper()
	var ln net.Listener
	var err error
	nstest.Do(t, ns.Handle, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
}

// ServeUDP listens on UDP addr in ns until the test ends and answers each datagram
// with what reply returns for it (nothing when reply returns nil).
func ServeUDP(t testing.TB, ns *netns.Namespace, addr string, reply func(from net.Addr, data []byte) []byte) {
	t.Helper()
	var pc net.PacketConn
	var err error
	nstest.Do(t, ns.Handle, func() { pc, err = net.ListenPacket("udp4", addr) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if out := reply(from, buf[:n]); out != nil {
				_, _ = pc.WriteTo(out, from)
			}
		}
	}()
}

// Dial connects from ns to addr, giving up after timeout. Failing to enter ns fails
// the test; a failed connection is returned as an error.
func Dial(t testing.TB, ns *netns.Namespace, network, addr string, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	var err error
	nstest.Do(t, ns.Handle, func() {
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()
		c, err = new(net.Dialer).DialContext(ctx, network, addr)
	})
	return c, err
}

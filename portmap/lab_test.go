package portmap_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// lab is a "host" namespace with bridges, containers attached by veths, and
// an "outside" client namespace behind an uplink veth. Addresses come from
// documentation ranges and ULAs.
type lab struct {
	t       testing.TB
	host    *netns.Namespace
	path    string // pinned path of the host namespace, for nsenter
	outside *netns.Namespace
}

const (
	hostV4 = "198.51.100.1" // the host's address on the uplink
	hostV6 = "2001:db8::1"
	outV4  = "198.51.100.2" // the outside client
	outV6  = "2001:db8::2"
)

func newLab(t testing.TB, brNetfilter bool) *lab {
	t.Helper()
	path, _ := nstest.NewPinned(t)
	l := &lab{t: t, host: openNS(t, path), path: path}
	l.noDAD(l.host)
	l.sysctl(l.host, "net/ipv4/ip_forward", "1")
	l.sysctl(l.host, "net/ipv6/conf/all/forwarding", "1")
	v := map[bool]string{true: "1", false: "0"}[brNetfilter]
	l.sysctl(l.host, "net/bridge/bridge-nf-call-iptables", v)
	l.sysctl(l.host, "net/bridge/bridge-nf-call-ip6tables", v)
	l.outside = l.peer("uplink", "", outV4+"/24", outV6+"/64", hostV4, hostV6)
	up, err := l.host.NL.LinkByName("uplink")
	l.must(err)
	l.addr(l.host.NL, up, hostV4+"/24")
	l.addr(l.host.NL, up, hostV6+"/64")
	return l
}

func openNS(t testing.TB, path string) *netns.Namespace {
	t.Helper()
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
		t.Fatal(err)
	}
	return ns
}

func (l *lab) must(err error) {
	l.t.Helper()
	if err != nil {
		l.t.Fatal(err)
	}
}

func (l *lab) sysctl(ns *netns.Namespace, key, val string) {
	l.t.Helper()
	l.must(ns.Do(func() error { return os.WriteFile(filepath.Join("/proc/sys", key), []byte(val), 0o644) }))
}

// noDAD turns off duplicate address detection for interfaces created in
// ns from now on: link-local addresses are usable at once.
func (l *lab) noDAD(ns *netns.Namespace) {
	l.t.Helper()
	l.sysctl(ns, "net/ipv6/conf/default/accept_dad", "0")
	l.sysctl(ns, "net/ipv6/conf/all/accept_dad", "0")
}

// addr adds a prefix without duplicate address detection (no waiting).
func (l *lab) addr(h *netlink.Handle, link netlink.Link, prefix string) {
	l.t.Helper()
	p := netip.MustParsePrefix(prefix)
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	l.must(h.AddrAdd(link, a))
}

// bridge creates a bridge in the host with gateway prefixes.
func (l *lab) bridge(name string, gateways ...string) {
	l.t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	l.must(l.host.NL.LinkAdd(br))
	for _, g := range gateways {
		l.addr(l.host.NL, br, g)
	}
	l.must(l.host.NL.LinkSetUp(br))
}

// peer creates a namespace joined to the host by a veth: hostSide
// (enslaved to master if not empty, in hairpin mode) in the host, eth0 with
// the given prefixes inside, default routes via gw4 and gw6.
func (l *lab) peer(hostSide, master, addr4, addr6, gw4, gw6 string) *netns.Namespace {
	l.t.Helper()
	path, _ := nstest.NewPinned(l.t)
	ns := openNS(l.t, path)
	l.noDAD(ns)
	la := netlink.LinkAttrs{Name: hostSide}
	if master != "" {
		m, err := l.host.NL.LinkByName(master)
		l.must(err)
		la.MasterIndex = m.Attrs().Index
	}
	l.must(l.host.NL.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns.Handle)}))
	hl, err := l.host.NL.LinkByName(hostSide)
	l.must(err)
	if master != "" {
		// What the bridge driver must do so that a container can reach
		// its own published port through a host address when
		// br_netfilter bridges the DNAT'd packet back out of its port.
		l.must(l.host.NL.LinkSetHairpin(hl, true))
	}
	l.must(l.host.NL.LinkSetUp(hl))
	eth0, err := ns.NL.LinkByName("eth0")
	l.must(err)
	l.addr(ns.NL, eth0, addr4)
	l.addr(ns.NL, eth0, addr6)
	l.must(ns.NL.LinkSetUp(eth0))
	for _, gw := range []string{gw4, gw6} {
		l.must(ns.NL.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: net.ParseIP(gw)}))
	}
	return ns
}

// reachable waits until ns reaches every addr over TCP: fresh links need a
// moment for IPv6 neighbour discovery.
func (l *lab) reachable(ns *netns.Namespace, addrs ...string) {
	l.t.Helper()
	for _, a := range addrs {
		eventually(l.t, 2*time.Second, "*", func() string {
			if ask(l.t, ns, "tcp", a) != "" {
				return "*"
			}
			return ""
		})
	}
}

// nft runs the nft binary in the host namespace through nsenter.
func (l *lab) nft(args ...string) {
	l.t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		l.t.Skip("nft binary not installed (tests only)")
	}
	out, err := exec.Command("nsenter", append([]string{"--net=" + l.path, "nft"}, args...)...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("nft %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// serveTCP answers each line on ns's port with "name remoteIP line".
func serveTCP(t *testing.T, ns *netns.Namespace, name string, port int) {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)) // both families
		return err
	})
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
			go echoLines(c, name)
		}
	}()
}

func echoLines(c net.Conn, name string) {
	defer c.Close()
	from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if _, err := fmt.Fprintf(c, "%s %s %s\n", name, from, sc.Text()); err != nil {
			return
		}
	}
}

// serveUDP answers each datagram on ns's port with "name remoteIP data".
func serveUDP(t *testing.T, ns *netns.Namespace, name string, port int) {
	t.Helper()
	var pc net.PacketConn
	err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			src := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
			_, _ = pc.WriteTo(fmt.Appendf(nil, "%s %s %s", name, src, buf[:n]), from)
		}
	}()
}

// ask sends one line (TCP) or datagram (UDP, up to three tries, as UDP
// clients do) from ns to addr and returns the answer, or "" if there was
// none.
func ask(t testing.TB, ns *netns.Namespace, proto, addr string) string {
	t.Helper()
	var c net.Conn
	err := ns.Do(func() (err error) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		c, err = new(net.Dialer).DialContext(ctx, proto, addr)
		return err
	})
	if err != nil {
		return ""
	}
	defer c.Close()
	tries := 1
	if proto == "udp" {
		tries = 3
	}
	for range tries {
		if got := roundTrip(c); got != "" {
			return got
		}
	}
	return ""
}

// roundTrip sends "ping" on c and returns the answer without the echo.
func roundTrip(c net.Conn) string {
	_ = c.SetDeadline(time.Now().Add(400 * time.Millisecond))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return ""
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) || n == 0 {
		return ""
	}
	return strings.TrimSuffix(strings.TrimSpace(string(buf[:n])), " ping")
}

// eventually polls fn until it returns want or the deadline passes, and
// returns how long that took.
func eventually(t testing.TB, within time.Duration, want string, fn func() string) time.Duration {
	t.Helper()
	start := time.Now()
	for got := fn(); got != want; got = fn() {
		if time.Since(start) > within {
			t.Fatalf("got %q, want %q within %v", got, want, within)
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	return time.Since(start)
}

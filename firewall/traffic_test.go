package firewall

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/piernet/pier/internal/nstest"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// lab is a fresh "host" namespace with bridges, containers (one namespace
// each, attached by a veth) and an "outside" namespace behind an uplink.
type lab struct {
	t    *testing.T
	host netns.NsHandle
	h    *netlink.Handle
}

func newLab(t *testing.T) *lab {
	t.Helper()
	l := &lab{t: t, host: nstest.New(t)}
	l.h = handleAt(t, l.host)
	nstest.Do(t, l.host, func() {
		// /proc/sys/net follows the opening thread's namespace.
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
			t.Errorf("enabling forwarding: %v", err)
		}
	})
	return l
}

func handleAt(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("lo up: %v", err)
	}
	return h
}

func (l *lab) must(err error) {
	l.t.Helper()
	if err != nil {
		l.t.Fatal(err)
	}
}

// bridge creates a bridge in the host with gateway address gw (a prefix).
func (l *lab) bridge(name, gw string) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	l.must(l.h.LinkAdd(br))
	l.must(l.h.AddrAdd(br, &netlink.Addr{IPNet: ipnet(gw)}))
	l.must(l.h.LinkSetUp(br))
}

// peer creates a namespace joined to the host by a veth: hostSide (enslaved
// to master if not empty) in the host, eth0 with addr in the namespace, and a
// default route via gw.
func (l *lab) peer(hostSide, master, addr, gw string) netns.NsHandle {
	ns := nstest.New(l.t)
	la := netlink.LinkAttrs{Name: hostSide}
	if master != "" {
		m, err := l.h.LinkByName(master)
		l.must(err)
		la.MasterIndex = m.Attrs().Index
	}
	l.must(l.h.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(ns)}))
	hl, err := l.h.LinkByName(hostSide)
	l.must(err)
	l.must(l.h.LinkSetUp(hl))

	h := handleAt(l.t, ns)
	eth0, err := h.LinkByName("eth0")
	l.must(err)
	l.must(h.AddrAdd(eth0, &netlink.Addr{IPNet: ipnet(addr)}))
	l.must(h.LinkSetUp(eth0))
	_, all, _ := net.ParseCIDR("0.0.0.0/0")
	l.must(h.RouteAdd(&netlink.Route{Dst: all, Gw: net.ParseIP(gw), LinkIndex: eth0.Attrs().Index}))
	return ns
}

func ipnet(s string) *net.IPNet {
	p := netip.MustParsePrefix(s)
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// serve listens on addr:80 in ns and answers each connection with the
// address it came from.
func serve(t *testing.T, ns netns.NsHandle, addr string) {
	t.Helper()
	var ln net.Listener
	var err error
	nstest.Do(t, ns, func() { ln, err = net.Listen("tcp", net.JoinHostPort(addr, "80")) })
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
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			_, _ = c.Write([]byte(host + "\n"))
			_ = c.Close()
		}
	}()
}

// connect dials addr:80 from ns and returns the source address the server
// saw, or "" if the connection failed. A dropped SYN shows as a timeout.
func connect(t *testing.T, ns netns.NsHandle, addr string) string {
	t.Helper()
	var seen string
	nstest.Do(t, ns, func() {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		c, err := new(net.Dialer).DialContext(ctx, "tcp", net.JoinHostPort(addr, "80"))
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		seen = strings.TrimSpace(line)
	})
	return seen
}

// TestTraffic proves the rules the way a user sees them: TCP connections
// between containers, to the gateway, and to and from the outside.
func TestTraffic(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	l := newLab(t)
	bridges := []Bridge{
		{Name: "pier0", Subnets4: pfx("10.10.0.0/24"), ICC: true, Masquerade: true},
		{Name: "br-off", Subnets4: pfx("10.20.0.0/24"), Masquerade: true},
		{Name: "br-int", Subnets4: pfx("10.30.0.0/24"), ICC: true, Masquerade: true, Internal: true},
	}
	for i, b := range bridges {
		gw := []string{"10.10.0.1/24", "10.20.0.1/24", "10.30.0.1/24"}[i]
		l.bridge(b.Name, gw)
	}
	a1 := l.peer("va1", "pier0", "10.10.0.2/24", "10.10.0.1")
	a2 := l.peer("va2", "pier0", "10.10.0.3/24", "10.10.0.1")
	c1 := l.peer("vc1", "br-off", "10.20.0.2/24", "10.20.0.1")
	c2 := l.peer("vc2", "br-off", "10.20.0.3/24", "10.20.0.1")
	i1 := l.peer("vi1", "br-int", "10.30.0.2/24", "10.30.0.1")
	i2 := l.peer("vi2", "br-int", "10.30.0.3/24", "10.30.0.1")
	out := l.peer("uplink", "", "192.168.100.2/24", "192.168.100.1")
	up, err := l.h.LinkByName("uplink")
	l.must(err)
	l.must(l.h.AddrAdd(up, &netlink.Addr{IPNet: ipnet("192.168.100.1/24")}))
	for ns, addr := range map[netns.NsHandle]string{a2: "10.10.0.3", c2: "10.20.0.3", i2: "10.30.0.3", out: "192.168.100.2", a1: "10.10.0.2", l.host: "10.20.0.1"} {
		serve(t, ns, addr)
	}

	cases := []struct {
		name     string
		from     netns.NsHandle
		to, want string // want: source address the server sees, "" = blocked
		brnf     bool   // needs br_netfilter
	}{
		{"same bridge, ICC on, not masqueraded", a1, "10.10.0.3", "10.10.0.2", false},
		{"same bridge, ICC off", c1, "10.20.0.3", "", true},
		{"ICC off bridge to its gateway", c1, "10.20.0.1", "10.20.0.2", false},
		{"between bridges", a1, "10.20.0.3", "", false},
		{"between bridges, reverse", c1, "10.10.0.3", "", false},
		{"to outside, masqueraded", a1, "192.168.100.2", "192.168.100.1", false},
		{"ICC off bridge to outside", c1, "192.168.100.2", "192.168.100.1", false},
		{"internal bridge, ICC on", i1, "10.30.0.3", "10.30.0.2", false},
		{"internal bridge to outside", i1, "192.168.100.2", "", false},
		{"internal bridge to other bridge", i1, "10.10.0.3", "", false},
		{"unsolicited inbound from outside", out, "10.10.0.2", "", false},
	}
	// Control: without pier's table every connection goes through, so what
	// is blocked below is blocked by the firewall.
	for _, tc := range cases {
		if connect(t, tc.from, tc.to) == "" {
			t.Fatalf("%s: blocked before the firewall was programmed; the lab is broken", tc.name)
		}
	}

	fw, err := New(ctx, Options{NetNS: l.host})
	l.must(err)
	t.Cleanup(func() { _ = fw.Close() })
	for _, b := range bridges {
		l.must(fw.SetBridge(ctx, b))
	}
	brnf := bridgeNetfilter(t, l.host)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.brnf && !brnf {
				t.Skip("bridged traffic bypasses the inet hooks: br_netfilter is off (net.bridge.bridge-nf-call-iptables)")
			}
			if got := connectExpecting(t, tc.from, tc.to, tc.want); got != tc.want {
				t.Errorf("connect to %s: server saw %q, want %q (\"\" = blocked)", tc.to, got, tc.want)
			}
		})
	}
}

// connectExpecting is connect, retried for up to 5 s when a connection is expected to
// succeed: on a loaded machine the first attempt (ARP resolution included) can exceed
// connect's 500 ms. An expected block stays one attempt.
func connectExpecting(t *testing.T, from netns.NsHandle, to, want string) string {
	got := connect(t, from, to)
	for deadline := time.Now().Add(5 * time.Second); want != "" && got != want && time.Now().Before(deadline); {
		got = connect(t, from, to)
	}
	return got
}

// TestTrafficICCUpdate proves a live SetBridge changes behaviour.
func TestTrafficICCUpdate(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	l := newLab(t)
	if !bridgeNetfilter(t, l.host) {
		t.Skip("br_netfilter is off (net.bridge.bridge-nf-call-iptables): ICC is not enforced for bridged traffic")
	}
	l.bridge("br-x", "10.40.0.1/24")
	x1 := l.peer("vx1", "br-x", "10.40.0.2/24", "10.40.0.1")
	x2 := l.peer("vx2", "br-x", "10.40.0.3/24", "10.40.0.1")
	serve(t, x2, "10.40.0.3")
	fw, err := New(ctx, Options{NetNS: l.host})
	l.must(err)
	t.Cleanup(func() { _ = fw.Close() })

	b := Bridge{Name: "br-x", Subnets4: pfx("10.40.0.0/24"), ICC: true}
	for _, icc := range []bool{true, false, true} {
		b.ICC = icc
		l.must(fw.SetBridge(ctx, b))
		want := map[bool]string{true: "10.40.0.2", false: ""}[icc]
		if got := connectExpecting(t, x1, "10.40.0.3", want); got != want {
			t.Errorf("ICC=%v: server saw %q, want %q", icc, got, want)
		}
	}
}

// bridgeNetfilter reports whether bridged IPv4 traffic crosses the inet hooks
// in ns.
func bridgeNetfilter(t *testing.T, ns netns.NsHandle) bool {
	var b []byte
	nstest.Do(t, ns, func() { b, _ = os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables") })
	return strings.TrimSpace(string(b)) == "1"
}

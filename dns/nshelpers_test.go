package dns

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// testNS is a fresh pinned namespace with loopback up, removed at cleanup.
type testNS struct {
	path string
	ns   *netns.Namespace
}

func newNS(t testing.TB) *testNS {
	t.Helper()
	path, _ := nstest.NewPinned(t)
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	lo, err := ns.NL.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.NL.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return &testNS{path: path, ns: ns}
}

// wire joins a and b with a veth pair (names an, bn) and addresses ap, bp.
func wire(t testing.TB, a *testNS, an, ap string, b *testNS, bn, bp string) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: an}, PeerName: bn, PeerNamespace: netlink.NsFd(int(b.ns.Handle))}
	if err := a.ns.NL.LinkAdd(veth); err != nil {
		t.Fatalf("creating veth: %v", err)
	}
	a.addrUp(t, an, ap)
	b.addrUp(t, bn, bp)
}

// addrUp adds the addresses (without duplicate detection) and sets the link up.
func (n *testNS) addrUp(t testing.TB, name string, prefixes ...string) {
	t.Helper()
	l, err := n.ns.NL.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range prefixes {
		addr, err := netlink.ParseAddr(p)
		if err != nil {
			t.Fatal(err)
		}
		addr.Flags = unix.IFA_F_NODAD
		if err := n.ns.NL.AddrAdd(l, addr); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.ns.NL.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
}

// dummy adds an interface holding the sandbox's own addresses, as its eth0 would
// (glibc's getaddrinfo asks for IPv4/IPv6 only when such an address exists).
func (n *testNS) dummy(t testing.TB, prefixes ...string) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"} // no dummy module here
	if err := n.ns.NL.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	n.addrUp(t, "peer0")
	n.addrUp(t, "eth0", prefixes...)
}

// defaultRoute sends everything not on-link to gw.
func (n *testNS) defaultRoute(t testing.TB, gw string) {
	t.Helper()
	if err := n.ns.NL.RouteAdd(&netlink.Route{Gw: net.ParseIP(gw)}); err != nil {
		t.Fatalf("adding default route: %v", err)
	}
}

// dial connects to 127.0.0.11:53 from a socket created inside the namespace.
func (n *testNS) dial(ctx context.Context, network string) (net.Conn, error) {
	var c net.Conn
	err := n.ns.Do(func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, network, ListenAddr.String())
		return err
	})
	return c, err
}

// resolver is Go's own stub resolver, talking to 127.0.0.11 inside the namespace.
func (n *testNS) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return n.dial(ctx, network)
	}}
}

// exchange sends one query with miekg/dns over network ("udp" or "tcp").
func (n *testNS) exchange(t testing.TB, network, name string, qtype uint16) (*mdns.Msg, time.Duration) {
	t.Helper()
	c, err := n.dial(t.Context(), network)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := new(mdns.Msg)
	q.SetQuestion(name, qtype)
	client := &mdns.Client{Net: network, Timeout: 10 * time.Second}
	m, rtt, err := client.ExchangeWithConn(q, &mdns.Conn{Conn: c})
	if err != nil {
		t.Fatalf("%s query for %s: %v", network, name, err)
	}
	return m, rtt
}

// getent runs glibc's getent inside the namespace with a private resolv.conf
// (and an nsswitch.conf that only asks DNS), in a private mount namespace.
func (n *testNS) getent(t testing.TB, resolvConf string, args ...string) (string, error) {
	t.Helper()
	nstest.Require(t, "nsenter", "unshare", "getent")
	dir := t.TempDir()
	rc, nss := filepath.Join(dir, "resolv.conf"), filepath.Join(dir, "nsswitch.conf")
	if err := os.WriteFile(rc, []byte(resolvConf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nss, []byte("hosts: dns\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/nsswitch.conf && shift 2 && exec getent "$@"`
	argv := append([]string{"--net=" + n.path, "--", "unshare", "--mount", "sh", "-c", script, "sh", rc, nss}, args...)
	return n.run(t, "nsenter", argv...)
}

// nslookup runs busybox nslookup against 127.0.0.11 inside the namespace.
func (n *testNS) nslookup(t testing.TB, args ...string) (string, error) {
	t.Helper()
	nstest.Require(t, "nsenter", "busybox")
	argv := append([]string{"--net=" + n.path, "--", "busybox", "nslookup"}, args...)
	return n.run(t, "nsenter", append(argv, ListenAddr.Addr().String())...)
}

func (n *testNS) run(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// testUpstream is a small DNS server in its own namespace. It serves:
// example.test A 203.0.113.7 (TTL 300), many.test with 100 A records, big.test
// with 2 KB of TXT; everything else NXDOMAIN with an SOA. UDP replies are
// truncated to the client's size, as real servers do.
type testUpstream struct {
	mu     sync.Mutex // guards counts
	counts map[string]int
}

func startUpstream(t testing.TB, n *testNS, addr string) *testUpstream {
	t.Helper()
	u := &testUpstream{counts: map[string]int{}}
	var pc net.PacketConn
	var l net.Listener
	err := n.ns.Do(func() error {
		var err error
		if pc, err = net.ListenPacket("udp", net.JoinHostPort(addr, "53")); err != nil {
			return err
		}
		l, err = net.Listen("tcp", net.JoinHostPort(addr, "53"))
		return err
	})
	if err != nil {
		t.Fatalf("starting upstream: %v", err)
	}
	for _, srv := range []*mdns.Server{{PacketConn: pc, Handler: u}, {Listener: l, Handler: u}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return u
}

// count is how many queries for name/type arrived over proto ("" for both).
func (u *testUpstream) count(name string, qtype uint16, proto string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, p := range []string{"udp", "tcp"} {
		if proto == "" || proto == p {
			n += u.counts[name+"/"+mdns.TypeToString[qtype]+"/"+p]
		}
	}
	return n
}

func (u *testUpstream) total() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for _, c := range u.counts {
		n += c
	}
	return n
}

func (u *testUpstream) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	q := r.Question[0]
	name, proto := strings.ToLower(q.Name), w.RemoteAddr().Network()
	u.mu.Lock()
	u.counts[name+"/"+mdns.TypeToString[q.Qtype]+"/"+proto]++
	u.mu.Unlock()
	m := new(mdns.Msg)
	m.SetReply(r)
	hdr := mdns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: mdns.ClassINET, Ttl: 300}
	switch {
	case name == "example.test." && q.Qtype == mdns.TypeA:
		m.Answer = append(m.Answer, &mdns.A{Hdr: hdr, A: net.IPv4(203, 0, 113, 7)})
	case name == "many.test." && q.Qtype == mdns.TypeA:
		for i := range 100 {
			m.Answer = append(m.Answer, &mdns.A{Hdr: hdr, A: net.IPv4(203, 0, 113, byte(i+1))})
		}
	case name == "big.test." && q.Qtype == mdns.TypeTXT:
		for i := range 10 {
			m.Answer = append(m.Answer, &mdns.TXT{Hdr: hdr, Txt: []string{strings.Repeat(string(rune('a'+i)), 200)}})
		}
	case name == "example.test." || name == "many.test." || name == "big.test.":
	default:
		m.Rcode = mdns.RcodeNameError
		m.Ns = []mdns.RR{&mdns.SOA{Hdr: mdns.RR_Header{Name: "test.", Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: 60},
			Ns: "ns.test.", Mbox: "hostmaster.test.", Serial: 1, Refresh: 60, Retry: 60, Expire: 60, Minttl: 60}}
	}
	if proto == "udp" {
		size := mdns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	_ = w.WriteMsg(m)
}

// addr parses an address for records.
func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

package ingress

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// mesh is the test topology: an outside client C on an underlay bridge with two
// routers R1 and R2, which share an ingress L2 bridge with tasks T1 and T2. Each
// task's default route goes to a dead end (a dummy interface), so replies that do
// not go back through the router that forwarded them are lost.
type mesh struct {
	lab     *netlab.Lab
	client  *netns.Namespace
	routers []*netns.Namespace // R1, R2
	tasks   []*netns.Namespace // T1, T2
	rts     []Router           // R1's and R2's ingress MAC and address
	pubs    []*Publisher       // one per router
	counts  []*batchCounts     // what each Publisher's batches held
}

// batchCounts counts the elements and rules of the last batch a Publisher sent.
type batchCounts struct{ elems, rules, queuedElems, queuedRules int }

// countingConn is a kernel connection that counts what each batch touches.
type countingConn struct {
	conn
	counts *batchCounts
}

func (c *countingConn) SetAddElements(s *nftables.Set, v []nftables.SetElement) error {
	c.counts.queuedElems += len(v)
	return c.conn.SetAddElements(s, v)
}

func (c *countingConn) SetDeleteElements(s *nftables.Set, v []nftables.SetElement) error {
	c.counts.queuedElems += len(v)
	return c.conn.SetDeleteElements(s, v)
}

func (c *countingConn) AddRule(r *nftables.Rule) *nftables.Rule {
	c.counts.queuedRules++
	return c.conn.AddRule(r)
}

func (c *countingConn) Flush() error {
	c.counts.elems, c.counts.rules = c.counts.queuedElems, c.counts.queuedRules
	c.counts.queuedElems, c.counts.queuedRules = 0, 0
	return c.conn.Flush()
}

var (
	clientAddr  = netip.MustParseAddr("192.0.2.100")
	routerAddrs = []string{"192.0.2.1", "192.0.2.2"}
	taskAddrs   = []netip.Addr{netip.MustParseAddr("10.255.0.11"), netip.MustParseAddr("10.255.0.12")}
	taskNames   = []string{"t1", "t2"}
)

func newMesh(t *testing.T) *mesh {
	t.Helper()
	nstest.Require(t, "root")
	l := netlab.New(t, netlab.Options{})
	l.Bridge("under")
	l.Bridge("ingr")
	m := &mesh{lab: l, client: l.Peer("vc", "under", []string{clientAddr.String() + "/24"}, nil)}
	for i, a := range routerAddrs {
		r := l.Peer(fmt.Sprintf("vr%d", i+1), "under", []string{a + "/24"}, nil)
		mac := attach(t, l, r, fmt.Sprintf("vr%di", i+1), "ingr", "ing0", fmt.Sprintf("10.255.0.%d/24", i+1))
		l.Sysctl(r, "net/ipv4/ip_forward", "1")
		m.routers = append(m.routers, r)
		m.rts = append(m.rts, Router{MAC: mac, Addr: netip.MustParseAddr(fmt.Sprintf("10.255.0.%d", i+1))})
		k := kernelAt(r.Handle)
		counts := &batchCounts{}
		dial := k.dial
		k.dial = func() (conn, error) {
			c, err := dial()
			return &countingConn{conn: c, counts: counts}, err
		}
		p, err := start(t.Context(), k, nstest.Log(t, -4))
		if err != nil {
			t.Fatal(err)
		}
		m.counts = append(m.counts, counts)
		t.Cleanup(func() { p.Close() })
		m.pubs = append(m.pubs, p)
	}
	for i, a := range taskAddrs {
		tk := l.Peer(fmt.Sprintf("vt%d", i+1), "ingr", []string{a.String() + "/24"}, nil)
		deadEnd(t, l, tk, fmt.Sprintf("vd%d", i+1))
		m.tasks = append(m.tasks, tk)
		name := taskNames[i]
		netlab.Serve(t, tk, ":80", func(c net.Conn) {
			defer c.Close()
			fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
		})
		// t1's UDP server is bound to the wildcard address (its replies leave with
		// the source address of its default route until Return fixes them), t2's to
		// its ingress address.
		bind := netip.IPv4Unspecified()
		if i == 1 {
			bind = a
		}
		serveUDP(t, tk, netip.AddrPortFrom(bind, 80), name)
	}
	return m
}

// attach adds a veth from bridge in the lab host to ns (named inside), with prefix,
// and returns the MAC of its inside end.
func attach(t *testing.T, l *netlab.Lab, ns *netns.Namespace, hostSide, bridge, inside, prefix string) net.HardwareAddr {
	t.Helper()
	br, err := l.Host.NL.LinkByName(bridge)
	l.Must(err)
	l.Must(l.Host.NL.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostSide, MasterIndex: br.Attrs().Index},
		PeerName: inside, PeerNamespace: netlink.NsFd(ns.Handle)}))
	hl, err := l.Host.NL.LinkByName(hostSide)
	l.Must(err)
	l.Must(l.Host.NL.LinkSetUp(hl))
	in, err := ns.NL.LinkByName(inside)
	l.Must(err)
	l.Addr(ns.NL, in, prefix)
	l.Must(ns.NL.LinkSetUp(in))
	return in.Attrs().HardwareAddr
}

// deadEnd gives ns a default route via a gateway that does not exist, behind a veth
// whose other end (hostSide, in the lab host) is on no bridge: replies that follow
// it are lost.
func deadEnd(t *testing.T, l *netlab.Lab, ns *netns.Namespace, hostSide string) {
	t.Helper()
	l.Must(l.Host.NL.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostSide}, PeerName: "dead", PeerNamespace: netlink.NsFd(ns.Handle)}))
	hl, err := l.Host.NL.LinkByName(hostSide)
	l.Must(err)
	l.Must(l.Host.NL.LinkSetUp(hl))
	d, err := ns.NL.LinkByName("dead")
	l.Must(err)
	l.Addr(ns.NL, d, "198.51.100.2/24")
	l.Must(ns.NL.LinkSetUp(d))
	l.Must(ns.NL.RouteAdd(&netlink.Route{LinkIndex: d.Attrs().Index, Gw: net.ParseIP("198.51.100.1")}))
}

// serveUDP answers each datagram to addr with "name peer".
func serveUDP(t *testing.T, ns *netns.Namespace, addr netip.AddrPort, name string) {
	var pc net.PacketConn
	var err error
	nstest.Do(t, ns.Handle, func() { pc, err = net.ListenPacket("udp4", addr.String()) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(fmt.Appendf(nil, "%s %s\n", name, from), from)
		}
	}()
}

// returns programs a Return with both routers in every task.
func (m *mesh) returns(t *testing.T) []*Return {
	t.Helper()
	var out []*Return
	for _, tk := range m.tasks {
		r, err := NewReturn(t.Context(), ReturnOptions{NetNS: tk.Handle, Iface: "eth0", Logger: nstest.Log(t, -4)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		if err := r.SetRouters(t.Context(), m.rts); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func (m *mesh) setAll(t *testing.T, s Service) {
	t.Helper()
	for _, p := range m.pubs {
		if err := p.Set(t.Context(), s); err != nil {
			t.Fatal(err)
		}
	}
}

// answer is what a task answered: its name and the peer it saw.
type answer struct {
	task string
	peer netip.AddrPort
}

// ask opens one connection from the client to addr (proto "tcp" or "udp") and
// returns the answer, checking that the peer the task saw is the client's socket
// unless snat (then only the peer is returned).
func (m *mesh) ask(t *testing.T, proto, addr string, timeout time.Duration) (answer, error) {
	t.Helper()
	c, err := netlab.Dial(t, m.client, proto+"4", addr, timeout)
	if err != nil {
		return answer{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if proto == "udp" {
		if _, err := c.Write([]byte("?")); err != nil {
			return answer{}, err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return answer{}, fmt.Errorf("reading the answer: %w", err)
	}
	name, peer, _ := strings.Cut(strings.TrimSpace(line), " ")
	ap, err := netip.ParseAddrPort(peer)
	if err != nil {
		return answer{}, fmt.Errorf("answer %q: %w", line, err)
	}
	return answer{task: name, peer: ap}, nil
}

// spread makes n connections to addr and counts the answers by task, failing unless
// every task saw the client's own address and port, or want's address if valid.
func (m *mesh) spread(t *testing.T, proto, addr string, n int, peer netip.Addr) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		a, err := m.ask(t, proto, addr, 2*time.Second)
		if err != nil {
			t.Fatalf("%s connection to %s: %v (so far %v)", proto, addr, err, got)
		}
		if a.peer.Addr() != peer {
			t.Fatalf("%s via %s: task %s saw the client as %v, want %v", proto, addr, a.task, a.peer, peer)
		}
		got[a.task]++
	}
	return got
}

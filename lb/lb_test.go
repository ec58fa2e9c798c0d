package lb

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// rig is a client namespace and three backends on one bridge; each backend answers
// TCP on :80 and :81 and UDP on :53 with its own name.
type rig struct {
	client   *netns.Namespace
	backends map[string]netip.Addr // name → address
	tbl      *Table
}

var vip = netip.MustParseAddr("10.1.0.100")

func newRig(t *testing.T) *rig {
	t.Helper()
	nstest.Require(t, "root")
	l := netlab.New(t, netlab.Options{})
	l.Bridge("br0", "10.1.0.1/24")
	r := &rig{client: l.Peer("vc", "br0", []string{"10.1.0.10/24"}, []string{"10.1.0.1"}), backends: map[string]netip.Addr{}}
	for i, name := range []string{"b1", "b2", "b3"} {
		addr := fmt.Sprintf("10.1.0.%d", 11+i)
		ns := l.Peer("v"+name, "br0", []string{addr + "/24"}, []string{"10.1.0.1"})
		r.backends[name] = netip.MustParseAddr(addr)
		for _, port := range []string{":80", ":81"} {
			netlab.Serve(t, ns, port, func(c net.Conn) {
				defer c.Close()
				fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
			})
		}
		serveUDP(t, ns, name)
	}
	tbl, err := New(t.Context(), Options{NetNS: r.client.Handle})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tbl.Close() })
	r.tbl = tbl
	return r
}

func serveUDP(t *testing.T, ns *netns.Namespace, name string) {
	netlab.ServeUDP(t, ns, ":53", func(net.Addr, []byte) []byte { return []byte(name) })
}

func (r *rig) addrs(names ...string) []netip.Addr {
	var out []netip.Addr
	for _, n := range names {
		out = append(out, r.backends[n])
	}
	return out
}

// ask connects from the client to addr and returns the name of the backend that
// answered, and the client address the backend saw.
func (r *rig) ask(t *testing.T, addr string) (string, string, error) {
	t.Helper()
	c, err := netlab.Dial(t, r.client, "tcp4", addr, 2*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", fmt.Errorf("reading answer: %w", err)
	}
	name, peer, _ := strings.Cut(strings.TrimSpace(line), " ")
	if peer != c.LocalAddr().String() {
		return "", "", fmt.Errorf("backend %s saw the client as %s, the client is %s", name, peer, c.LocalAddr())
	}
	return name, peer, nil
}

func (r *rig) spread(t *testing.T, n int, addr string) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		name, _, err := r.ask(t, addr)
		if err != nil {
			t.Fatalf("connection to %s: %v", addr, err)
		}
		got[name]++
	}
	return got
}

func TestVIPSpreadsConnectionsOverBackends(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	svc := Service{ID: "web", VIP: vip, Ports: []Port{{"tcp", 80}}, Backends: r.addrs("b1", "b2", "b3")}
	if err := r.tbl.Set(ctx, svc); err != nil {
		t.Fatal(err)
	}
	// 300 connections, p = 1/3 each: mean 100, sd 8.2; 60 is 4.9 sd below the mean
	// (a fair balancer falls under it with probability < 1e-5 per backend).
	got := r.spread(t, 300, vip.String()+":80")
	for _, b := range []string{"b1", "b2", "b3"} {
		if got[b] < 60 {
			t.Errorf("backend %s got %d of 300 connections (want ≥ 60): %v", b, got[b], got)
		}
	}
	// A port the service does not list is refused at once, while :80 still works.
	start := time.Now()
	_, _, err := r.ask(t, vip.String()+":81")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("port 81 on the VIP: got %v, want connection refused", err)
	}
	t.Logf("unlisted port refused after %v", time.Since(start))
	if _, _, err := r.ask(t, vip.String()+":80"); err != nil {
		t.Fatalf("port 80 after the refusal: %v", err)
	}

	// Removing a backend: it gets no new connections; the others do.
	svc.Backends = r.addrs("b1", "b3")
	if err := r.tbl.Set(ctx, svc); err != nil {
		t.Fatal(err)
	}
	got = r.spread(t, 60, vip.String()+":80")
	if got["b2"] != 0 || got["b1"] == 0 || got["b3"] == 0 {
		t.Fatalf("after removing b2: %v", got)
	}

	// No backend: refused at once, not a timeout.
	svc.Backends = nil
	if err := r.tbl.Set(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.ask(t, vip.String()+":80"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("service without backends: got %v, want connection refused", err)
	}
	svc.Backends = r.addrs("b2")
	if err := r.tbl.Set(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if got := r.spread(t, 10, vip.String()+":80"); got["b2"] != 10 {
		t.Fatalf("single backend b2: %v", got)
	}

	// Removed: the VIP is nothing any more (no route answers it: the dial fails).
	if err := r.tbl.Remove(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.ask(t, vip.String()+":80"); err == nil {
		t.Fatal("the VIP still answers after the service was removed")
	}
}

func TestVIPWithoutPortsBalancesEveryPortAndUDP(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	svc := Service{ID: "any", VIP: vip, Backends: r.addrs("b1", "b2")}
	if err := r.tbl.Set(ctx, svc); err != nil {
		t.Fatal(err)
	}
	for _, port := range []string{":80", ":81"} {
		got := r.spread(t, 40, vip.String()+port)
		if got["b1"] == 0 || got["b2"] == 0 || got["b3"] != 0 {
			t.Fatalf("port %s: %v", port, got)
		}
	}
	// UDP: one socket keeps its flow (conntrack); removing its backend moves it.
	var conn net.Conn
	var err error
	nstest.Do(t, r.client.Handle, func() { conn, err = net.Dial("udp4", vip.String()+":53") })
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	first := udpAsk(t, conn)
	for range 5 {
		if got := udpAsk(t, conn); got != first {
			t.Fatalf("one UDP flow answered by %s then %s", first, got)
		}
	}
	other := map[string]string{"b1": "b2", "b2": "b1"}[first]
	svc.Backends = r.addrs(other)
	if err := r.tbl.Set(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if got := udpAsk(t, conn); got != other {
		t.Fatalf("after removing %s the flow is answered by %q, want %s (stale conntrack entry)", first, got, other)
	}
}

func udpAsk(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("?")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("UDP answer: %v", err)
	}
	return string(buf[:n])
}

func TestStickyKeepsAClientOnOneBackend(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	svc := Service{ID: "st", VIP: vip, Ports: []Port{{"tcp", 80}}, Backends: r.addrs("b1", "b2", "b3"), Sticky: time.Minute}
	if err := r.tbl.Set(ctx, svc); err != nil {
		t.Fatal(err)
	}
	got := r.spread(t, 100, vip.String()+":80")
	if len(got) != 1 {
		t.Fatalf("sticky: 100 connections from one client went to %v", got)
	}
	var chosen string
	for b := range got {
		chosen = b
	}
	// Its backend removed: the client moves, and sticks to the new one.
	var rest []string
	for _, b := range []string{"b1", "b2", "b3"} {
		if b != chosen {
			rest = append(rest, b)
		}
	}
	svc.Backends = r.addrs(rest...)
	if err := r.tbl.Set(ctx, svc); err != nil {
		t.Fatal(err)
	}
	got = r.spread(t, 30, vip.String()+":80")
	if len(got) != 1 || got[chosen] != 0 {
		t.Fatalf("after removing %s: %v", chosen, got)
	}
	// Stickiness off: spread again.
	svc.Sticky = 0
	if err := r.tbl.Set(ctx, svc); err != nil {
		t.Fatal(err)
	}
	if got := r.spread(t, 40, vip.String()+":80"); len(got) != 2 {
		t.Fatalf("sticky off: %v", got)
	}
	requireNft(t, r, "sticky_st", false)
}

// requireNft checks the kernel listing of the table for substr.
func requireNft(t *testing.T, r *rig, substr string, want bool) {
	t.Helper()
	nstest.Require(t, "nft")
	out, err := exec.Command("nsenter", "--net="+r.client.Path, "nft", "list", "table", "ip", TableName).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, out)
	}
	if strings.Contains(string(out), substr) != want {
		t.Fatalf("table listing contains %q: %v, want %v\n%s", substr, !want, want, out)
	}
}

func TestTwoServicesAndRestoreAfterFailure(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	a := Service{ID: "a", VIP: vip, Ports: []Port{{"tcp", 80}}, Backends: r.addrs("b1")}
	b := Service{ID: "b", VIP: netip.MustParseAddr("10.1.0.101"), Ports: []Port{{"tcp", 81}}, Backends: r.addrs("b2")}
	for _, s := range []Service{a, b} {
		if err := r.tbl.Set(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// Someone deletes our table: the next change (a no-op for the kernel view of
	// service b) fails or succeeds, and the one after rewrites everything.
	out, err := exec.Command("nsenter", "--net="+r.client.Path, "nft", "delete", "table", "ip", TableName).CombinedOutput()
	if err != nil {
		t.Skipf("nft delete table: %v %s", err, out)
	}
	b.Backends = r.addrs("b3")
	if err := r.tbl.Set(ctx, b); err == nil {
		t.Fatal("a change on a deleted table succeeded")
	}
	if err := r.tbl.Set(ctx, b); err != nil {
		t.Fatalf("the change after a failed batch (a rewrite): %v", err)
	}
	if got := r.spread(t, 5, vip.String()+":80"); got["b1"] != 5 {
		t.Fatalf("service a after the rewrite: %v", got)
	}
	if got := r.spread(t, 5, "10.1.0.101:81"); got["b3"] != 5 {
		t.Fatalf("service b after the rewrite: %v", got)
	}
	if err := r.tbl.Set(ctx, Service{ID: "c", VIP: vip}); err == nil {
		t.Fatal("a second service on the same VIP was accepted")
	}
	var _ io.Reader
}

// Listening sees a TCP listener and a bound UDP socket on the asked ports only: what
// puts a starting task into rotation.
func TestListeningSeesTCPListenersAndBoundUDP(t *testing.T) {
	nstest.Require(t, "root")
	l := netlab.New(t, netlab.Options{})
	l.Bridge("br0", "10.1.0.1/24")
	ns := l.Peer("vt", "br0", []string{"10.1.0.11/24"}, nil)
	m := NewSandboxes(nil)
	listening := func(ports ...Port) bool {
		t.Helper()
		ok, err := m.Listening(t.Context(), ns.Path, ports)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	tcp80, udp53 := Port{Proto: "tcp", Port: 80}, Port{Proto: "udp", Port: 53}
	if listening(tcp80, udp53) {
		t.Fatal("a namespace with no sockets listens")
	}
	// A connected TCP socket on another port is no listener.
	netlab.Serve(t, ns, ":81", func(c net.Conn) { c.Close() })
	if listening(tcp80, Port{Proto: "udp", Port: 81}) {
		t.Fatal("a TCP listener on 81 counts for 80/tcp or 81/udp")
	}
	if !listening(Port{Proto: "tcp", Port: 81}) {
		t.Fatal("a TCP listener on 81 is not seen")
	}
	serveUDP(t, ns, "b")
	if !listening(tcp80, udp53) || listening(Port{Proto: "tcp", Port: 53}) {
		t.Fatal("a UDP socket bound to 53 is not seen as 53/udp only")
	}
}

// TestRemovedBackendsUnansweredTCPFlowsAreForgotten: a SYN to a backend that never
// answers leaves a conntrack entry (SYN_SENT, two minutes) that keeps its DNAT. Once
// the backend is removed, a connection from the same source port (a retransmission,
// or a new connection that got the port again) is balanced anew, not sent to the dead
// backend.
func TestRemovedBackendsUnansweredTCPFlowsAreForgotten(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	dead := netip.MustParseAddr("10.1.0.50") // no host: its ARP fails, SYNs vanish
	svc := Service{ID: "web", VIP: vip, Ports: []Port{{"tcp", 80}}, Backends: []netip.Addr{dead}}
	if err := r.tbl.Set(ctx, svc); err != nil {
		t.Fatal(err)
	}
	dial := func(timeout time.Duration) (string, error) {
		var line string
		var err error
		nstest.Do(t, r.client.Handle, func() {
			d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: net.IPv4(10, 1, 0, 10), Port: 40000},
				Control: func(_, _ string, c syscall.RawConn) error {
					return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
				}}
			var c net.Conn
			if c, err = d.Dial("tcp4", vip.String()+":80"); err != nil {
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			line, err = bufio.NewReader(c).ReadString('\n')
		})
		return line, err
	}
	if _, err := dial(300 * time.Millisecond); err == nil {
		t.Fatal("a connection to the dead backend succeeded")
	}
	svc.Backends = r.addrs("b1")
	if err := r.tbl.Set(ctx, svc); err != nil {
		t.Fatal(err)
	}
	line, err := dial(2 * time.Second)
	if err != nil || !strings.HasPrefix(line, "b1 ") {
		t.Fatalf("from the same source port after the dead backend's removal: %q, %v; want b1 (a stale SYN_SENT entry?)", line, err)
	}
}

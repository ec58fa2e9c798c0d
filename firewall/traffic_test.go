package firewall

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// serve listens on addr:80 in ns and answers each connection with the
// address it came from.
func serve(t *testing.T, ns *netns.Namespace, addr string) {
	t.Helper()
	netlab.Serve(t, ns, net.JoinHostPort(addr, "80"), func(c net.Conn) {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		_, _ = c.Write([]byte(host + "\n"))
		_ = c.Close()
	})
}

// connect dials addr:80 from ns and returns the source address the server
// saw, or "" if the connection failed. A dropped SYN shows as a timeout.
func connect(t *testing.T, ns *netns.Namespace, addr string) string {
	t.Helper()
	return connectTo(t, ns, net.JoinHostPort(addr, "80"))
}

// connectTo is connect to host:port addr.
func connectTo(t *testing.T, ns *netns.Namespace, addr string) string {
	t.Helper()
	c, err := netlab.Dial(t, ns, "tcp", addr, 500*time.Millisecond)
	if err != nil {
		return ""
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

// TestTraffic proves the rules the way a user sees them: TCP connections
// between containers, to the gateway, and to and from the outside.
func TestTraffic(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	l := netlab.New(t, netlab.Options{BridgeNetfilter: true}) // ICC off on a bridge needs it
	bridges := []Bridge{
		{Name: "pier0", Subnets4: nstest.Prefixes("10.10.0.0/24"), ICC: true, Masquerade: true},
		{Name: "br-off", Subnets4: nstest.Prefixes("10.20.0.0/24"), Masquerade: true},
		{Name: "br-int", Subnets4: nstest.Prefixes("10.30.0.0/24"), ICC: true, Masquerade: true, Internal: true},
	}
	for i, b := range bridges {
		gw := []string{"10.10.0.1/24", "10.20.0.1/24", "10.30.0.1/24"}[i]
		l.Bridge(b.Name, gw)
	}
	a1 := l.Peer("va1", "pier0", []string{"10.10.0.2/24"}, []string{"10.10.0.1"})
	a2 := l.Peer("va2", "pier0", []string{"10.10.0.3/24"}, []string{"10.10.0.1"})
	c1 := l.Peer("vc1", "br-off", []string{"10.20.0.2/24"}, []string{"10.20.0.1"})
	c2 := l.Peer("vc2", "br-off", []string{"10.20.0.3/24"}, []string{"10.20.0.1"})
	i1 := l.Peer("vi1", "br-int", []string{"10.30.0.2/24"}, []string{"10.30.0.1"})
	i2 := l.Peer("vi2", "br-int", []string{"10.30.0.3/24"}, []string{"10.30.0.1"})
	out := l.Uplink("uplink", []string{"192.168.100.1/24"}, []string{"192.168.100.2/24"})
	for ns, addr := range map[*netns.Namespace]string{a2: "10.10.0.3", c2: "10.20.0.3", i2: "10.30.0.3", out: "192.168.100.2", a1: "10.10.0.2", l.Host: "10.20.0.1"} {
		serve(t, ns, addr)
	}

	cases := []struct {
		name     string
		from     *netns.Namespace
		to, want string // want: source address the server sees, "" = blocked
	}{
		{"same bridge, ICC on, not masqueraded", a1, "10.10.0.3", "10.10.0.2"},
		{"same bridge, ICC off", c1, "10.20.0.3", ""},
		{"ICC off bridge to its gateway", c1, "10.20.0.1", "10.20.0.2"},
		{"between bridges", a1, "10.20.0.3", ""},
		{"between bridges, reverse", c1, "10.10.0.3", ""},
		{"to outside, masqueraded", a1, "192.168.100.2", "192.168.100.1"},
		{"ICC off bridge to outside", c1, "192.168.100.2", "192.168.100.1"},
		{"internal bridge, ICC on", i1, "10.30.0.3", "10.30.0.2"},
		{"internal bridge to outside", i1, "192.168.100.2", ""},
		{"internal bridge to other bridge", i1, "10.10.0.3", ""},
		{"unsolicited inbound from outside", out, "10.10.0.2", ""},
	}
	// Control: without pier's table every connection goes through, so what
	// is blocked below is blocked by the firewall.
	for _, tc := range cases {
		got := connect(t, tc.from, tc.to)
		for deadline := time.Now().Add(5 * time.Second); got == "" && time.Now().Before(deadline); {
			got = connect(t, tc.from, tc.to) // a first SYN can be lost while neighbours resolve
		}
		if got == "" {
			t.Fatalf("%s: blocked before the firewall was programmed; the lab is broken", tc.name)
		}
	}

	fw, err := New(ctx, Options{NetNS: l.Host.Handle})
	l.Must(err)
	t.Cleanup(func() { _ = fw.Close() })
	for _, b := range bridges {
		l.Must(fw.SetBridge(ctx, b))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := connectExpecting(t, tc.from, tc.to, tc.want); got != tc.want {
				t.Errorf("connect to %s: server saw %q, want %q (\"\" = blocked)", tc.to, got, tc.want)
			}
		})
	}
}

// connectExpecting is connect, retried for up to 5 s when a connection is expected to
// succeed: on a loaded machine the first attempt (ARP resolution included) can exceed
// connect's 500 ms. An expected block stays one attempt.
func connectExpecting(t *testing.T, from *netns.Namespace, to, want string) string {
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
	l := netlab.New(t, netlab.Options{BridgeNetfilter: true})
	l.Bridge("br-x", "10.40.0.1/24")
	x1 := l.Peer("vx1", "br-x", []string{"10.40.0.2/24"}, []string{"10.40.0.1"})
	x2 := l.Peer("vx2", "br-x", []string{"10.40.0.3/24"}, []string{"10.40.0.1"})
	serve(t, x2, "10.40.0.3")
	fw, err := New(ctx, Options{NetNS: l.Host.Handle})
	l.Must(err)
	t.Cleanup(func() { _ = fw.Close() })

	b := Bridge{Name: "br-x", Subnets4: nstest.Prefixes("10.40.0.0/24"), ICC: true}
	for _, icc := range []bool{true, false, true} {
		b.ICC = icc
		l.Must(fw.SetBridge(ctx, b))
		want := map[bool]string{true: "10.40.0.2", false: ""}[icc]
		if got := connectExpecting(t, x1, "10.40.0.3", want); got != want {
			t.Errorf("ICC=%v: server saw %q, want %q", icc, got, want)
		}
	}
}

package lab

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// TestLabPierdRestartKeepsOverlay: h1's pierd is stopped (SIGTERM) and started, then
// killed (SIGKILL) and started, while its sandbox and one on h2 share an overlay. A
// TCP connection opened before the restarts still echoes after each, new connections
// work, the name still resolves on h2, and h1 has one bridge/VXLAN pair for the VNI,
// not two.
func TestLabPierdRestartKeepsOverlay(t *testing.T) {
	l := up(t, 3) // three etcd members: h1's restart keeps the store's quorum
	ok(t)(sh(t, l, "h1", "docker", "network", "create", "-d", "overlay", "--attachable", "ov"))
	nstest.Eventually(t, "ov on h2", 5*time.Second, func() bool {
		_, err := pier(t, l, "h2", "network", "inspect", "ov")
		return err == nil
	})
	ok(t)(pier(t, l, "h1", "sandbox", "create", "--network", "ov", "--name", "web"))
	ok(t)(pier(t, l, "h2", "sandbox", "create", "--network", "ov", "--name", "cli"))
	web, cli := sandboxNS(t, l, "h1", "web"), sandboxNS(t, l, "h2", "cli")
	webAddr := overlayAddr(t, l, "h1", "web")
	netlab.Serve(t, web, ":7777", func(c net.Conn) { defer c.Close(); _, _ = io.Copy(c, c) })
	to := netip.AddrPortFrom(webAddr, 7777).String()
	var conn net.Conn
	nstest.Eventually(t, "a first connection from cli to web", 5*time.Second, func() bool {
		c, err := netlab.Dial(t, cli, "tcp", to, time.Second)
		if err == nil {
			conn = c
		}
		return err == nil
	})
	t.Cleanup(func() { conn.Close() })
	long := bufio.NewReader(conn)
	lineEchoes(t, conn, long, "before", 5*time.Second)
	pairs := func() string { return overlayDevices(t, l, "h1") }
	want := pairs()
	var vni int
	if _, err := fmt.Sscanf(want, "ovbr%d", &vni); err != nil || want != fmt.Sprintf("ovbr%d bridge, ovh veth, ovvx%d vxlan id %d", vni, vni, vni) {
		t.Fatalf("h1's overlay devices before the restart: %q, want one bridge, one VXLAN device and web's veth", want)
	}
	t.Logf("h1's overlay devices: %s", want)
	for _, restart := range []struct {
		how  string
		halt func(string) error
	}{{"stop", l.Stop}, {"kill", l.Kill}} {
		if err := restart.halt("h1"); err != nil {
			t.Fatal(err)
		}
		if err := l.Start(t.Context(), "h1"); err != nil {
			t.Fatal(err)
		}
		// The connection opened before the restart carries data again (TCP
		// retransmits whatever was lost while h2 had withdrawn web's peer entry).
		lineEchoes(t, conn, long, "after "+restart.how, 20*time.Second)
		nstest.Eventually(t, "a new connection from cli to web after "+restart.how, 10*time.Second, func() bool {
			c, err := netlab.Dial(t, cli, "tcp", to, time.Second)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		nstest.Eventually(t, "web to resolve on h2 after "+restart.how, 10*time.Second, func() bool {
			out, err := pier(t, l, "h2", "exec", "cli", "--", "nslookup", "web")
			return err == nil && strings.Contains(out, webAddr.String())
		})
		if got := pairs(); got != want {
			t.Fatalf("h1's overlay devices after %s: %q, want %q", restart.how, got, want)
		}
		if out := ok(t)(pier(t, l, "h2", "node", "ls", "--format", "{{.Name}} {{.Endpoints}}")); !strings.Contains(out, "h1 1\n") {
			t.Fatalf("endpoints per node on h2 after %s (want h1 with exactly one):\n%s", restart.how, out)
		}
	}
}

// lineEchoes writes a line on c and waits up to d for it to come back.
func lineEchoes(t *testing.T, c net.Conn, r *bufio.Reader, what string, d time.Duration) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(d))
	line := "still here " + what + "\n"
	if _, err := io.WriteString(c, line); err != nil {
		t.Fatalf("long-running connection %s: %v", what, err)
	}
	got, err := r.ReadString('\n')
	if err != nil || got != line {
		t.Fatalf("long-running connection %s: read %q, %v; want %q", what, got, err, line)
	}
}

// sandboxNS opens a sandbox's network namespace on host.
func sandboxNS(t *testing.T, l *Lab, host, name string) *netns.Namespace {
	t.Helper()
	ns, err := netns.Open(ok(t)(pier(t, l, host, "sandbox", "inspect", name, "-f", "{{.Key}}")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// overlayAddr is a sandbox's IPv4 address on network ov.
func overlayAddr(t *testing.T, l *Lab, host, name string) netip.Addr {
	t.Helper()
	out := ok(t)(pier(t, l, host, "sandbox", "inspect", name, "-f",
		`{{range .Endpoints}}{{if eq .Network "ov"}}{{.IPv4Address}}{{end}}{{end}}`))
	p, err := netip.ParsePrefix(out)
	if err != nil {
		t.Fatalf("%s's address on ov: %q", name, out)
	}
	return p.Addr()
}

// overlayDevices summarises `ip -d link` on host: each overlay bridge, VXLAN device
// (with its ID) and endpoint veth, sorted.
func overlayDevices(t *testing.T, l *Lab, host string) string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(ok(t)(sh(t, l, host, "ip", "-d", "-o", "link")), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		switch {
		case strings.HasPrefix(name, "ovbr") && strings.Contains(line, " bridge "):
			out = append(out, name+" bridge")
		case strings.HasPrefix(name, "ovvx") && strings.Contains(line, " vxlan id "):
			id := strings.Fields(line[strings.Index(line, " vxlan id ")+len(" vxlan id "):])[0]
			out = append(out, name+" vxlan id "+id)
		case strings.HasPrefix(name, "ovh") && strings.Contains(line, " veth "):
			out = append(out, "ovh veth") // an endpoint's host side
		case strings.HasPrefix(name, "ov"):
			out = append(out, name+" ?")
		}
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

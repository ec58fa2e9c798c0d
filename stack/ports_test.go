package stack

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/portmap"
)

func specs(t *testing.T, ps ...string) []portmap.Spec {
	t.Helper()
	var out []portmap.Spec
	for _, p := range ps {
		s, err := portmap.ParseSpec(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s...)
	}
	return out
}

func (e *env) publishedSandbox(name, net string, ports ...string) cnm.Sandbox {
	e.t.Helper()
	c := e.s.Controller
	if _, err := c.CreateSandbox(e.t.Context(), cnm.SandboxSpec{Name: name, Ports: specs(e.t.(*testing.T), ports...)}); err != nil {
		e.t.Fatal(err)
	}
	if _, err := c.Connect(e.t.Context(), net, name, cnm.EndpointSpec{}); err != nil {
		e.t.Fatalf("connecting %s: %v", name, err)
	}
	sb, _ := c.Sandbox(e.t.Context(), name)
	return sb
}

// dialReaches retries dialFrom for up to 5 s: a path that should work may lose its
// first SYN on a loaded machine (neighbour resolution), and a 1 s attempt is short.
func dialReaches(key string, addr netip.AddrPort) error {
	return within(5*time.Second, func() error { return dialFrom(key, addr) })
}

// dialFrom opens a TCP echo round trip from the namespace at key (or the host when
// key is the host path) to addr and checks the echo: one attempt.
func dialFrom(key string, addr netip.AddrPort) error { return echo(key, addr, time.Second) }

func TestPublishedPortReachableAndKeptAcrossRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	out := outside(t, e)
	e.network(cnm.NetworkSpec{Name: "web"})
	sb := e.publishedSandbox("srv", "web", "8080:7777/tcp", "7777/tcp")
	listen(t, sb.Key)
	if len(sb.Published) < 2 {
		t.Fatalf("published = %v, want the fixed and the ephemeral binding", sb.Published)
	}
	ephemeral := hostPort(sb.Published, 8080)
	ephemeralAddr := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.1"), ephemeral)
	for _, c := range []struct {
		from string
		to   netip.AddrPort
	}{
		{out, netip.MustParseAddrPort("198.51.100.1:8080")}, {e.hostPath, netip.MustParseAddrPort("198.51.100.1:8080")},
		{e.hostPath, netip.MustParseAddrPort("127.0.0.1:8080")}, {out, ephemeralAddr},
	} {
		if err := dialReaches(c.from, c.to); err != nil {
			t.Errorf("dial %s: %v", c.to, err)
		}
	}
	// A second sandbox asking for the same host port fails with Docker's words and keeps nothing.
	_, err := e.s.Controller.CreateSandbox(t.Context(), cnm.SandboxSpec{Name: "dup", Ports: specs(t, "9090:80", "8080:80")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.s.Controller.Connect(t.Context(), "web", "dup", cnm.EndpointSpec{})
	if !errdefs.Is(err, errdefs.KindConflict) || !strings.Contains(err.Error(), "Bind for 0.0.0.0:8080 failed: port is already allocated") {
		t.Fatalf("duplicate host port: %v", err)
	}
	// 9090 of the failed request was rolled back: another sandbox can take it.
	e.publishedSandbox("takes9090", "web", "9090:80")

	e.reopen()
	sb, _ = e.s.Controller.Sandbox(t.Context(), "srv")
	if got := hostPort(sb.Published, 8080); got != ephemeral {
		t.Errorf("ephemeral host port after restart = %d, want %d", got, ephemeral)
	}
	for _, to := range []netip.AddrPort{netip.MustParseAddrPort("198.51.100.1:8080"), ephemeralAddr} {
		if err := dialReaches(out, to); err != nil {
			t.Errorf("after restart, dial %s: %v", to, err)
		}
	}
	if err := e.s.Controller.DeleteSandbox(t.Context(), "srv", true); err != nil {
		t.Fatal(err)
	}
	for _, to := range []netip.AddrPort{netip.MustParseAddrPort("198.51.100.1:8080"), ephemeralAddr} {
		if err := dialFrom(out, to); err == nil {
			t.Errorf("%s still published after the sandbox was removed", to)
		}
	}
}

// hostPort returns the host port of the first binding that is not except.
func hostPort(bs []portmap.Binding, except uint16) uint16 {
	for _, b := range bs {
		if b.HostPort != except {
			return b.HostPort
		}
	}
	return 0
}

func TestMacvlanRefusesPublishedPorts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.network(cnm.NetworkSpec{Name: "mv", Driver: "macvlan"})
	if _, err := e.s.Controller.CreateSandbox(t.Context(), cnm.SandboxSpec{Name: "p", Ports: specs(t, "80")}); err != nil {
		t.Fatal(err)
	}
	_, err := e.s.Controller.Connect(t.Context(), "mv", "p", cnm.EndpointSpec{})
	if !errdefs.Is(err, errdefs.KindForbidden) || !strings.Contains(err.Error(), "does not publish ports") {
		t.Fatalf("macvlan with -p: %v", err)
	}
}

// TestIPv4OnlySandboxPublishedOnIPv6: without a host address, ports are published on
// both families, as Docker does: IPv6 clients of an IPv4-only sandbox are served by
// the proxy (the kernel cannot NAT IPv6 to IPv4), on ::1 and on the host's own IPv6
// addresses alike.
func TestIPv4OnlySandboxPublishedOnIPv6(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	out := outside6(t, e)
	e.network(cnm.NetworkSpec{Name: "web"})
	sb := e.publishedSandbox("srv", "web", "8080:7777/tcp")
	listen(t, sb.Key)
	var got []string
	for _, b := range sb.Published {
		got = append(got, b.String())
	}
	if want := "0.0.0.0:8080->7777/tcp [::]:8080->7777/tcp"; strings.Join(got, " ") != want {
		t.Errorf("published = %v, want %s", got, want)
	}
	for _, c := range []struct{ from, to string }{
		{e.hostPath, "[::1]:8080"}, {out, "[2001:db8:1::1]:8080"},
		{e.hostPath, "127.0.0.1:8080"}, {out, "198.51.100.1:8080"},
	} {
		if err := dialReaches(c.from, netip.MustParseAddrPort(c.to)); err != nil {
			t.Errorf("dial %s: %v", c.to, err)
		}
	}
	if err := e.s.Controller.DeleteSandbox(t.Context(), "srv", true); err != nil {
		t.Fatal(err)
	}
	if err := dialFrom(out, netip.MustParseAddrPort("[2001:db8:1::1]:8080")); err == nil {
		t.Error("IPv6 port still served after the sandbox was removed")
	}
}

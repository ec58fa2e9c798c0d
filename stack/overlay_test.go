package stack

import (
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// TestOverlayPublishedPortOnItsHost: a sandbox on host 2 attached only to an overlay
// and created with -p 8080:7777 serves a machine on the LAN (and host 1) at host 2's
// address; host 1, where the sandbox is not, publishes nothing.
func TestOverlayPublishedPortOnItsHost(t *testing.T) {
	l := newClusterLab(t, 2)
	h1, h2 := l.hosts[0], l.hosts[1]
	out := l.outsider(t)
	h1.network(cnm.NetworkSpec{Name: "ov", Driver: "overlay", Attachable: true})
	waitNetwork(t, h2, "ov")
	srv := h2.publishedSandbox("srv", "ov", "8080:7777/tcp")
	listen(t, srv.Key)
	if got := strings.Join(links(t, srv.Key), " "); got != "eth0 eth1 lo" {
		t.Fatalf("overlay-only sandbox has %s (want the overlay and the gateway bridge)", got)
	}
	if got := bindings(srv); got != "0.0.0.0:8080->7777/tcp [::]:8080->7777/tcp" {
		t.Errorf("published = %s", got)
	}
	onHost2 := netip.MustParseAddrPort("192.0.2.2:8080")
	for _, from := range []string{out, h1.hostPath} {
		if err := dialReaches(from, onHost2); err != nil {
			t.Fatalf("echo through host 2's published port %s: %v", onHost2, err)
		}
	}
	if err := dialFrom(out, netip.MustParseAddrPort("192.0.2.1:8080")); err == nil {
		t.Fatal("host 1 serves 8080 for a sandbox that runs on host 2")
	}
}

func bindings(sb cnm.Sandbox) string {
	var out []string
	for _, b := range sb.Published {
		out = append(out, b.String())
	}
	return strings.Join(out, " ")
}

// TestClusteredHostHealsAfterNftFlush: `nft flush ruleset` on host 1 takes its
// masquerade and port rules; within a loose deadline the overlay-only sandbox there
// reaches a LAN machine again (masqueraded to host 1's address) and its published port
// answers again, while its overlay traffic to host 2 never stops.
func TestClusteredHostHealsAfterNftFlush(t *testing.T) {
	nstest.Require(t, "nft")
	l := newClusterLab(t, 2)
	h1, h2 := l.hosts[0], l.hosts[1]
	out := l.outsider(t)
	whoami(t, out, ":9000")
	h1.network(cnm.NetworkSpec{Name: "ov", Driver: "overlay", Attachable: true})
	waitNetwork(t, h2, "ov")
	web := h1.publishedSandbox("web", "ov", "8081:7777/tcp")
	listen(t, web.Key)
	h2.sandbox("peer", "ov")
	listen(t, h2.sandboxKey("peer"))
	peer := h2.addr("peer", "ov", false)
	external := func() error {
		got, err := askWhoami(web.Key, netip.MustParseAddrPort("192.0.2.254:9000"))
		if err == nil && got != "192.0.2.1" {
			err = fmt.Errorf("the LAN machine saw %s, want host 1's address (masquerade)", got)
		}
		return err
	}
	published := func() error { return dialFrom(out, netip.MustParseAddrPort("192.0.2.1:8081")) }
	overlay := func() error { return dialEcho(web.Key, peer, time.Second) }
	for what, f := range map[string]func() error{"external": external, "published port": published, "overlay": overlay} {
		if err := within(5*time.Second, f); err != nil {
			t.Fatalf("before the flush, %s: %v", what, err)
		}
	}
	before := tables(t, h1.hostPath)
	if out, err := run(h1.hostPath, "nft", "flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v\n%s", err, out)
	}
	start := time.Now()
	for {
		if err := overlay(); err != nil {
			t.Errorf("overlay traffic to host 2 %v after the flush: %v", time.Since(start).Round(time.Millisecond), err)
		}
		errExt, errPub := external(), published()
		if errExt == nil && errPub == nil {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("not healed 10 s after nft flush ruleset: external: %v; published port: %v", errExt, errPub)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("external connectivity and published port back %v after the flush", time.Since(start).Round(time.Millisecond))
	// The flush did happen: the same tables are back, re-created (new handles).
	after := tables(t, h1.hostPath)
	if strings.Join(slices.Sorted(maps.Keys(before)), " ") != strings.Join(slices.Sorted(maps.Keys(after)), " ") {
		t.Fatalf("tables before the flush %v, after healing %v", before, after)
	}
	for name, h := range before {
		if after[name] == h {
			t.Errorf("table %s kept its handle %s: was it flushed?", name, h)
		}
	}
}

// tables lists the nftables tables in the namespace at key with their handles.
func tables(t *testing.T, key string) map[string]string {
	t.Helper()
	out, err := run(key, "nft", "-a", "list", "ruleset")
	if err != nil {
		t.Fatalf("nft list ruleset: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if name, h, ok := strings.Cut(strings.TrimPrefix(line, "table "), " { # handle "); ok && strings.HasPrefix(line, "table ") {
			m[name] = h
		}
	}
	if len(m) == 0 {
		t.Fatalf("no nftables tables on the host:\n%s", out)
	}
	return m
}

// within retries f until it succeeds or d has passed.
func within(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// whoami serves TCP on addr in the namespace at key: it writes each caller's address
// as it sees it, and closes.
func whoami(t *testing.T, key, addr string) {
	t.Helper()
	ns, err := netns.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	netlab.Serve(t, ns, addr, func(c net.Conn) {
		defer c.Close()
		ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		_, _ = io.WriteString(c, ap.Addr().String())
	})
}

// askWhoami connects from the namespace at key to a whoami server at addr.
func askWhoami(key string, addr netip.AddrPort) (string, error) {
	ns, err := netns.Open(key)
	if err != nil {
		return "", err
	}
	defer ns.Close()
	var c net.Conn
	if err := ns.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr.String(), time.Second); return }); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

func (e *env) sandboxKey(name string) string {
	e.t.Helper()
	sb, err := e.s.Controller.Sandbox(e.t.Context(), name)
	if err != nil {
		e.t.Fatal(err)
	}
	return sb.Key
}

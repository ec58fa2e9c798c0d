package stack

import (
	"bytes"
	"crypto/rand"
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

// TestOverlayLargeTransfersAndUDP: 2 MiB each way across hosts through an echo over
// one TCP connection (compared byte for byte: a wrong MTU stalls this, not a ping),
// and UDP datagrams of the overlay's full MTU.
func TestOverlayLargeTransfersAndUDP(t *testing.T) {
	hosts := clusterHosts(t, 2)
	hosts[0].network(cnm.NetworkSpec{Name: "ov", Driver: "overlay", Attachable: true})
	nstest.Eventually(t, "ov on host 2", 10*time.Second, func() bool { _, err := hosts[1].s.Controller.Network(t.Context(), "ov"); return err == nil })
	web := hosts[0].sandbox("web", "ov")
	cli := hosts[1].sandbox("cli", "ov")
	listen(t, web.Key)
	webAddr := hosts[0].addr("web", "ov", false)
	ns, err := netns.Open(cli.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var c net.Conn
	nstest.Eventually(t, "a connection across hosts", 10*time.Second, func() bool {
		err := ns.Do(func() (err error) {
			c, err = net.DialTimeout("tcp", netip.AddrPortFrom(webAddr, 7777).String(), time.Second)
			return
		})
		return err == nil
	})
	defer c.Close()
	payload := make([]byte, 2<<20)
	if _, err := rand.Read(payload); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	errc := make(chan error, 1)
	go func() { _, err := c.Write(payload); errc <- err }()
	back := make([]byte, len(payload))
	if _, err := io.ReadFull(c, back); err != nil {
		t.Fatalf("reading 2 MiB back across hosts: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing 2 MiB across hosts: %v", err)
	}
	if !bytes.Equal(back, payload) {
		t.Fatal("the 2 MiB echoed across hosts differ from what was sent")
	}
	// UDP at the overlay MTU (1450 here: 1500 − 50): 1450 − 28 bytes of payload.
	var srv net.PacketConn
	wns, err := netns.Open(web.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer wns.Close()
	if err := wns.Do(func() (err error) { srv, err = net.ListenPacket("udp4", ":5353"); return }); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteTo(buf[:n], from)
		}
	}()
	var u net.Conn
	if err := ns.Do(func() (err error) { u, err = net.Dial("udp4", netip.AddrPortFrom(webAddr, 5353).String()); return }); err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	dgram := payload[:1450-28]
	got := make([]byte, 2048)
	nstest.Eventually(t, "a full-MTU UDP echo across hosts", 10*time.Second, func() bool {
		_ = u.SetDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := u.Write(dgram); err != nil {
			return false
		}
		n, err := u.Read(got)
		return err == nil && bytes.Equal(got[:n], dgram)
	})
}

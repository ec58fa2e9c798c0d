package stack

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/piernet/pier/cnm"
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

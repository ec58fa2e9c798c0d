package netns

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/internal/nstest"
)

func TestDefaultRouteReplaceAndRemoveKeepsConnectedDefault(t *testing.T) {
	m, key, _ := newManager(t)
	sb, _ := m.Get(key)
	for _, name := range []string{"gw0", "l3"} {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		if err := sb.NL.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: name + "p"}); err != nil {
			t.Fatal(err)
		}
	}
	ctx := t.Context()
	if err := m.ConfigureInterface(ctx, key, Interface{Name: "gw0", Addr4: netip.MustParsePrefix("10.1.0.2/24")}); err != nil {
		t.Fatal(err)
	}
	if err := m.ConfigureInterface(ctx, key, Interface{Name: "l3", Addr6: netip.MustParsePrefix("fd00:1::2/64"),
		Routes: []Route{{Dst: netip.MustParsePrefix("::/0")}}}); err != nil {
		t.Fatal(err)
	}
	if err := m.SetDefaultRoute(ctx, key, DefaultRoute{IfName: "gw0", GW4: netip.MustParseAddr("10.1.0.1")}); err != nil {
		t.Fatal(err)
	}
	if got := defaults(t, sb); got != 2 {
		t.Fatalf("%d default routes, want the gateway one and the connected one", got)
	}
	if err := m.SetDefaultRoute(ctx, key, DefaultRoute{}); err != nil {
		t.Fatal(err)
	}
	rs, _ := Dump(func() ([]netlink.Route, error) { return sb.NL.RouteList(nil, netlink.FAMILY_V4) })
	for _, r := range rs {
		if r.Gw != nil {
			t.Errorf("gateway route left: %v", r)
		}
	}
	if got := defaults(t, sb); got != 1 {
		t.Fatalf("%d default routes after removal, want only the connected IPv6 one", got)
	}
}

func defaults(t *testing.T, ns *Namespace) int {
	t.Helper()
	rs, err := Dump(func() ([]netlink.Route, error) { return ns.NL.RouteList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range rs {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if ones, _ := maskOnes(r); ones == 0 {
				n++
			}
		}
	}
	return n
}

func maskOnes(r netlink.Route) (int, int) {
	if r.Dst == nil {
		return 0, 0
	}
	return r.Dst.Mask.Size()
}

// newManager returns a manager whose host is a fresh pinned namespace, one sandbox
// "sb" in it (its key) and the host's path; all of it is removed when the test ends.
func newManager(t *testing.T) (*Manager, string, string) {
	t.Helper()
	hostPath, _ := nstest.NewPinned(t)
	host, err := Open(hostPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	m := NewManager(filepath.Join(t.TempDir(), "netns"), host)
	t.Cleanup(func() { m.Close() })
	key, err := m.Create(t.Context(), "sb")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Destroy(context.Background(), key) })
	return m, key, hostPath
}

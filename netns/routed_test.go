package netns

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/internal/nstest"
)

func TestRoutedSeesNonDefaultRoutesOnly(t *testing.T) {
	path, _ := nstest.NewPinned(t)
	ns, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "d0"
	if err := ns.NL.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "d0p"}); err != nil {
		t.Fatal(err)
	}
	l, err := ns.NL.LinkByName("d0")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"d0", "d0p"} { // a veth has carrier once both ends are up
		if l, err := ns.NL.LinkByName(name); err != nil {
			t.Fatal(err)
		} else if err := ns.NL.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	gw := netip.MustParseAddr("198.51.100.1")
	if err := ns.NL.AddrAdd(l, &netlink.Addr{IPNet: PrefixToIPNet(netip.MustParsePrefix("198.51.100.2/24"))}); err != nil {
		t.Fatal(err)
	}
	if err := ns.NL.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: gw.AsSlice()}); err != nil { // default route
		t.Fatal(err)
	}
	for p, want := range map[string]bool{
		"198.51.100.128/25": true,  // inside the connected route
		"198.51.0.0/16":     true,  // contains it
		"203.0.113.0/24":    false, // only the default route covers it
	} {
		if got := ns.Routed(netip.MustParsePrefix(p)); got != want {
			t.Errorf("Routed(%s) = %v, want %v", p, got, want)
		}
	}
}

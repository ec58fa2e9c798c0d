package macvlan

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/internal/subif"
	"github.com/piernet/pier/errdefs"
)

func TestModes(t *testing.T) {
	for name, want := range modes {
		l := Kind.NewLink(netlink.LinkAttrs{Name: "eth0"}, name).(*netlink.Macvlan)
		if l.Mode != want || l.Type() != Name {
			t.Errorf("mode %s: %v %s", name, l.Mode, l.Type())
		}
	}
	cfg, err := ParseOptions(false, map[string]string{"parent": "eth1"})
	if err != nil || cfg.Mode != "bridge" {
		t.Errorf("default mode: %+v, %v", cfg, err)
	}
	_, err = ParseOptions(false, map[string]string{OptMode: "l2"})
	if !errdefs.Is(err, errdefs.KindInvalidArgument) || !strings.Contains(err.Error(), "valid modes: bridge, private, vepa, passthru") {
		t.Errorf("bad mode: %v", err)
	}
}

func TestDriver(t *testing.T) {
	d := New(subif.NewFake("eth1"), nil)
	if d.Name() != Name || d.PublishesPorts() {
		t.Errorf("name %s, publishes ports %v", d.Name(), d.PublishesPorts())
	}
	nc := driver.NetworkConfig{ID: "n1", Options: map[string]string{"parent": "eth1"}}
	if err := d.CreateNetwork(t.Context(), nc); err != nil {
		t.Fatal(err)
	}
	info, err := d.CreateEndpoint(t.Context(), driver.EndpointConfig{NetworkID: "n1", EndpointID: "e1", Addr4: netip.MustParsePrefix("192.0.2.9/24")})
	if err != nil || info.MAC.String() != "02:42:c0:00:02:09" {
		t.Errorf("MAC = %v, %v; want Docker's 02:42 + IPv4", info.MAC, err)
	}
}

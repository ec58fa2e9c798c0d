package ipvlan

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/internal/subif"
	"github.com/piernet/pier/errdefs"
)

func TestModes(t *testing.T) {
	for name, want := range modes {
		l := Kind.NewLink(netlink.LinkAttrs{Name: "eth0"}, name).(*netlink.IPVlan)
		if l.Mode != want || l.Type() != Name || Kind.Routed(name) != (name != "l2") {
			t.Errorf("mode %s: %v %s", name, l.Mode, l.Type())
		}
	}
	cfg, err := ParseOptions(false, map[string]string{"parent": "eth1"})
	if err != nil || cfg.Mode != "l2" {
		t.Errorf("default mode: %+v, %v", cfg, err)
	}
	_, err = ParseOptions(false, map[string]string{OptMode: "bridge"})
	if !errdefs.Is(err, errdefs.KindInvalidArgument) || !strings.Contains(err.Error(), "valid modes: l2, l3, l3s") {
		t.Errorf("bad mode: %v", err)
	}
}

// TestKernelWithoutIPvlan: like this machine's kernel, found out by trying.
func TestKernelWithoutIPvlan(t *testing.T) {
	k := subif.NewFake("eth1")
	k.Unsupported[Name] = true
	d := New(k, nil)
	err := d.CreateNetwork(t.Context(), driver.NetworkConfig{ID: "n1", Name: "iv", Options: map[string]string{"parent": "eth1"}})
	if !errdefs.Is(err, errdefs.KindNotImplemented) || err.Error() != `ipvlan network "iv": kernel does not support ipvlan (module ipvlan)` {
		t.Errorf("err = %v", err)
	}
	if d.PublishesPorts() {
		t.Error("ipvlan publishes ports")
	}
}

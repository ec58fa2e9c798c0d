// Package ipvlan is pier's ipvlan driver: sandboxes get an ipvlan sub-interface of a
// parent link (`-o parent=IFACE`) sharing the parent's MAC address. In l2 mode the
// network behaves like macvlan (gateway per subnet); in l3 and l3s modes the parent
// routes, so sandboxes get a connected default route and no gateway. The mechanism is
// shared with macvlan in driver/internal/subif.
//
// A kernel without ipvlan fails network creation with "kernel does not support
// ipvlan" (found by trying, once).
package ipvlan

import (
	"log/slog"

	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/driver/internal/subif"
)

// Name is the driver name.
const Name = "ipvlan"

// OptMode is the mode option.
const OptMode = "ipvlan_mode"

var modes = map[string]netlink.IPVlanMode{
	"l2":  netlink.IPVLAN_MODE_L2,
	"l3":  netlink.IPVLAN_MODE_L3,
	"l3s": netlink.IPVLAN_MODE_L3S,
}

// Kind describes ipvlan to the shared engine.
var Kind = &subif.Kind{
	Name:    Name,
	ModeOpt: OptMode,
	Modes:   []string{"l2", "l3", "l3s"},
	NewLink: func(attrs netlink.LinkAttrs, mode string) netlink.Link {
		return &netlink.IPVlan{LinkAttrs: attrs, Mode: modes[mode]}
	},
	Routed: func(mode string) bool { return mode != "l2" },
}

// Driver is the ipvlan driver.
type Driver = subif.Driver

// New returns an ipvlan driver on kernel k (subif.HostKernel in production).
func New(k subif.Kernel, log *slog.Logger) *Driver { return subif.New(Kind, k, log) }

// Config is the typed configuration of an ipvlan network.
type Config = subif.Config

// ParseOptions decodes a network's `-o` options (pure: nothing is created).
func ParseOptions(internal bool, opts map[string]string) (Config, error) {
	return subif.ParseOptions(Kind, internal, opts)
}

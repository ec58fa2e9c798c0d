// Package macvlan is pier's macvlan driver: sandboxes get a macvlan sub-interface of a
// parent link (`-o parent=IFACE`), with their own MAC address, directly on the
// parent's segment. The mechanism is shared with ipvlan in driver/internal/subif; this
// package holds what is macvlan's own: its modes and options.
package macvlan

import (
	"log/slog"

	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/driver/bridge"
	"github.com/piernet/pier/driver/internal/subif"
)

// Name is the driver name.
const Name = "macvlan"

// OptMode is the mode option.
const OptMode = "macvlan_mode"

var modes = map[string]netlink.MacvlanMode{
	"bridge":   netlink.MACVLAN_MODE_BRIDGE,
	"private":  netlink.MACVLAN_MODE_PRIVATE,
	"vepa":     netlink.MACVLAN_MODE_VEPA,
	"passthru": netlink.MACVLAN_MODE_PASSTHRU,
}

// Kind describes macvlan to the shared engine.
var Kind = &subif.Kind{
	Name:    Name,
	ModeOpt: OptMode,
	Modes:   []string{"bridge", "private", "vepa", "passthru"},
	NewLink: func(attrs netlink.LinkAttrs, mode string) netlink.Link {
		return &netlink.Macvlan{LinkAttrs: attrs, Mode: modes[mode]}
	},
	OwnMAC:    true,
	DeriveMAC: bridge.DeriveMAC,
}

// Driver is the macvlan driver.
type Driver = subif.Driver

// New returns a macvlan driver on kernel k (subif.HostKernel in production).
func New(k subif.Kernel, log *slog.Logger) *Driver { return subif.New(Kind, k, log) }

// Config is the typed configuration of a macvlan network.
type Config = subif.Config

// ParseOptions decodes a network's `-o` options (pure: nothing is created).
func ParseOptions(internal bool, opts map[string]string) (Config, error) {
	return subif.ParseOptions(Kind, internal, opts)
}

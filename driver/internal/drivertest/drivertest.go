// Package drivertest holds helpers for the drivers' unit tests. It does no I/O.
package drivertest

import (
	"net/netip"

	"github.com/piernet/pier/driver"
)

// Network returns the config of network id (named "n-" + its first 4 characters)
// with options opts and one IPAM pool per subnet, each with its first address as the
// gateway.
func Network(id string, opts map[string]string, subnets ...string) driver.NetworkConfig {
	nc := driver.NetworkConfig{ID: id, Name: "n-" + id[:4], Options: opts}
	for _, s := range subnets {
		p := netip.MustParsePrefix(s)
		d := driver.IPAMData{Pool: p, Gateway: netip.PrefixFrom(p.Addr().Next(), p.Bits())}
		if p.Addr().Is4() {
			nc.IPv4 = append(nc.IPv4, d)
		} else {
			nc.IPv6 = append(nc.IPv6, d)
		}
	}
	return nc
}

package api

import (
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/moby/moby/api/types/network"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/cnm"
)

// networkView renders a network record in Docker's shape.
func networkView(n cnm.Network) network.Network {
	return network.Network{
		Name: n.Name, ID: n.ID, Created: n.Created, Scope: string(n.Scope), Driver: n.Driver,
		EnableIPv4: !n.DisableIPv4, EnableIPv6: n.EnableIPv6, Internal: n.Internal, Attachable: n.Attachable, Ingress: n.Ingress,
		IPAM: network.IPAM{Driver: n.IPAMDriver, Options: n.IPAMOptions, Config: ipamView(n)},
		// Docker prints {} for empty options and labels, never null.
		Options: withVNIs(n), Labels: orEmpty(n.Labels),
	}
}

// withVNIs adds the VXLAN IDs of a global network to its options, as Docker shows
// them for swarm overlays (com.docker.network.driver.overlay.vxlanid_list).
func withVNIs(n cnm.Network) map[string]string {
	if len(n.VNIs) == 0 {
		return orEmpty(n.Options)
	}
	out := make(map[string]string, len(n.Options)+1)
	for k, v := range n.Options {
		out[k] = v
	}
	ids := make([]string, len(n.VNIs))
	for i, v := range n.VNIs {
		ids[i] = strconv.FormatUint(uint64(v), 10)
	}
	out["com.docker.network.driver.overlay.vxlanid_list"] = strings.Join(ids, ",")
	return out
}

func ipamView(n cnm.Network) []network.IPAMConfig {
	out := []network.IPAMConfig{}
	for _, p := range append(append([]cnm.Pool{}, n.IPv4...), n.IPv6...) {
		c := network.IPAMConfig{Subnet: p.Subnet, IPRange: p.IPRange, AuxAddress: p.Aux}
		if p.Gateway.IsValid() {
			c.Gateway = p.Gateway.Addr()
		}
		out = append(out, c)
	}
	return out
}

func orEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func endpointResource(ep cnm.Endpoint, name string) network.EndpointResource {
	mac, _ := net.ParseMAC(ep.MAC)
	return network.EndpointResource{Name: name, EndpointID: ep.ID, MacAddress: network.HardwareAddr(mac),
		IPv4Address: ep.Addr4, IPv6Address: ep.Addr6}
}

// sandboxEndpoint renders one endpoint of a sandbox for pier's sandbox routes.
func sandboxEndpoint(ep cnm.Endpoint, netName string) types.SandboxEndpoint {
	aliases := ep.Aliases
	if aliases == nil {
		aliases = []string{}
	}
	return types.SandboxEndpoint{Network: netName, NetworkID: ep.NetworkID, EndpointID: ep.ID,
		IfName: ep.IfName, MacAddress: ep.MAC, IPv4Address: prefixString(ep.Addr4),
		IPv6Address: prefixString(ep.Addr6), Gateway: addrString(ep.Gateway4),
		IPv6Gateway: addrString(ep.Gateway6), Aliases: aliases, LinkLocalIPs: addrStrings(ep.LinkLocal)}
}

func addrStrings(as []netip.Addr) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

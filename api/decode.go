package api

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/ipam"
)

// The request bodies below have Docker's field names but string-typed addresses, so
// parse errors carry pier's messages (ipam.ParsePrefix) rather than encoding/json's.

type createNetworkRequest struct {
	Name           string
	CheckDuplicate *bool // always checked; accepted for old clients
	Driver         string
	Scope          string
	EnableIPv4     *bool
	EnableIPv6     *bool
	IPAM           *ipamRequest
	Internal       bool
	Attachable     bool
	Ingress        bool
	ConfigOnly     bool
	ConfigFrom     *struct{ Network string }
	Options        map[string]string
	Labels         map[string]string
}

type ipamRequest struct {
	Driver  string
	Options map[string]string
	Config  []ipamConfigRequest
}

type ipamConfigRequest struct {
	Subnet             string
	IPRange            string
	Gateway            string
	AuxiliaryAddresses map[string]string
}

// predefinedNames cannot be used for new networks (Docker's IsPreDefinedNetwork).
var predefinedNames = map[string]bool{"bridge": true, "host": true, "none": true, "default": true}

// decodeNetworkCreate turns a POST /networks/create body into a NetworkSpec. It is
// pure: everything it accepts has been validated as far as possible without I/O.
func decodeNetworkCreate(data []byte) (cnm.NetworkSpec, error) {
	var req createNetworkRequest
	if err := decodeJSON(data, &req); err != nil {
		return cnm.NetworkSpec{}, err
	}
	if err := checkCreateUnsupported(req); err != nil {
		return cnm.NetworkSpec{}, err
	}
	spec := cnm.NetworkSpec{Name: req.Name, Driver: req.Driver, Internal: req.Internal,
		Attachable: req.Attachable, Options: req.Options, Labels: req.Labels}
	if req.EnableIPv6 != nil {
		spec.EnableIPv6 = *req.EnableIPv6
	}
	spec.DisableIPv4 = req.EnableIPv4 != nil && !*req.EnableIPv4
	if req.IPAM != nil {
		spec.IPAMDriver, spec.IPAMOptions = req.IPAM.Driver, req.IPAM.Options
		for _, c := range req.IPAM.Config {
			p, err := decodePool(c)
			if err != nil {
				return cnm.NetworkSpec{}, err
			}
			spec.IPAM = append(spec.IPAM, p)
		}
	}
	return spec, nil
}

func checkCreateUnsupported(req createNetworkRequest) error {
	switch {
	case strings.TrimSpace(req.Name) == "":
		return errdefs.InvalidArgument("network name is required")
	case predefinedNames[req.Name]:
		return errdefs.Forbidden("%s is a pre-defined network and cannot be created", req.Name)
	case req.Scope != "" && req.Scope != "local":
		return errdefs.NotImplemented("scope %q is not supported: pier networks are local", req.Scope)
	case req.Ingress:
		return errdefs.NotImplemented("ingress networks are not supported")
	case req.ConfigOnly || req.ConfigFrom != nil && req.ConfigFrom.Network != "":
		return errdefs.NotImplemented("config-only networks are not supported")
	}
	return nil
}

func decodePool(c ipamConfigRequest) (cnm.PoolSpec, error) {
	var p cnm.PoolSpec
	var err error
	if c.Subnet != "" {
		if p.Subnet, err = parseNetworkPrefix("subnet", c.Subnet); err != nil {
			return p, err
		}
	}
	if c.IPRange != "" {
		if p.IPRange, err = parseNetworkPrefix("ip-range", c.IPRange); err != nil {
			return p, err
		}
	}
	if c.Gateway != "" {
		if p.Gateway, err = parseGateway(c.Gateway); err != nil {
			return p, err
		}
	}
	for name, s := range c.AuxiliaryAddresses {
		a, err := ipam.ParseAddr(s)
		if err != nil {
			return p, err
		}
		if p.Aux == nil {
			p.Aux = map[string]netip.Addr{}
		}
		p.Aux[name] = a
	}
	return p, nil
}

// parseGateway accepts an address, or (as some clients send) an address with a length.
func parseGateway(s string) (netip.Addr, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err == nil {
			return p.Addr().Unmap(), nil
		}
	}
	return ipam.ParseAddr(s)
}

type connectRequest struct {
	Container      string
	EndpointConfig *struct {
		IPAMConfig *struct {
			IPv4Address  string
			IPv6Address  string
			LinkLocalIPs []string
		}
		Links      []string
		Aliases    []string
		MacAddress string
		GwPriority int
	}
}

// connectSpec is a decoded POST /networks/{id}/connect body.
type connectSpec struct {
	sandbox string
	spec    cnm.EndpointSpec
}

// decodeConnect turns a POST /networks/{id}/connect body into the sandbox reference
// and the endpoint spec.
func decodeConnect(data []byte) (connectSpec, error) {
	var req connectRequest
	if err := decodeJSON(data, &req); err != nil {
		return connectSpec{}, err
	}
	if req.Container == "" {
		return connectSpec{}, errdefs.InvalidArgument("Container (a sandbox name or ID) is required")
	}
	c := connectSpec{sandbox: req.Container}
	ec := req.EndpointConfig
	if ec == nil {
		return c, nil
	}
	c.spec.Aliases, c.spec.Priority, c.spec.Links = ec.Aliases, ec.GwPriority, ec.Links
	var err error
	if c.spec.MAC, err = parseMAC(ec.MacAddress); err != nil {
		return connectSpec{}, err
	}
	if ec.IPAMConfig != nil {
		c.spec.Addr4, c.spec.Addr6, err = parseStaticAddrs(ec.IPAMConfig.IPv4Address, ec.IPAMConfig.IPv6Address)
		if err != nil {
			return connectSpec{}, err
		}
		if c.spec.LinkLocal, err = parseLinkLocal(ec.IPAMConfig.LinkLocalIPs); err != nil {
			return connectSpec{}, err
		}
	}
	return c, nil
}

// parseLinkLocal parses LinkLocalIPs: link-local unicast addresses only.
func parseLinkLocal(ss []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range ss {
		a, err := ipam.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("LinkLocalIPs: %w", err)
		}
		if !a.IsLinkLocalUnicast() {
			return nil, errdefs.InvalidArgument("invalid link-local address %s in LinkLocalIPs: it must be in 169.254.0.0/16 or fe80::/10", a)
		}
		if slices.Contains(out, a) {
			return nil, errdefs.InvalidArgument("link-local address %s is given twice in LinkLocalIPs", a)
		}
		out = append(out, a)
	}
	return out, nil
}

func parseMAC(s string) (net.HardwareAddr, error) {
	if s == "" {
		return nil, nil
	}
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, errdefs.InvalidArgument("invalid MAC address %q: want six colon-separated hex bytes such as 02:42:ac:11:00:02", s)
	}
	return mac, nil
}

// parseStaticAddrs parses requested static addresses and checks their families.
func parseStaticAddrs(v4, v6 string) (a4, a6 netip.Addr, err error) {
	if v4 != "" {
		if a4, err = ipam.ParseAddr(v4); err != nil {
			return a4, a6, err
		}
		if !a4.Is4() {
			return a4, a6, errdefs.InvalidArgument("IPv4 address %q is not an IPv4 address", v4)
		}
	}
	if v6 != "" {
		if a6, err = ipam.ParseAddr(v6); err != nil {
			return a4, a6, err
		}
		if !a6.Is6() {
			return a4, a6, errdefs.InvalidArgument("IPv6 address %q is not an IPv6 address", v6)
		}
	}
	return a4, a6, nil
}

type disconnectRequest struct {
	Container string
	Force     bool
}

// decodeDisconnect decodes a POST /networks/{id}/disconnect body.
func decodeDisconnect(data []byte) (disconnectRequest, error) {
	var req disconnectRequest
	if err := decodeJSON(data, &req); err != nil {
		return req, err
	}
	if req.Container == "" {
		return req, errdefs.InvalidArgument("Container (a sandbox name or ID) is required")
	}
	return req, nil
}

// parseNetworkPrefix parses a subnet or ip-range and, as current Docker does, refuses
// one with host bits set rather than silently masking them.
func parseNetworkPrefix(what, s string) (netip.Prefix, error) {
	p, err := ipam.ParsePrefix(s)
	if err != nil {
		return p, err
	}
	if raw, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil && raw.Addr().Unmap() != p.Addr() {
		return netip.Prefix{}, errdefs.InvalidArgument("invalid %s %s: it should be %s", what, s, p)
	}
	return p, nil
}

package remote

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
)

// CreateEndpoint implements driver.Driver. The plugin may fill fields of the interface
// that were empty in the request; a reply setting one that was already set is an error
// and the endpoint is deleted on the plugin again (Docker's rule).
func (d *Driver) CreateEndpoint(ctx context.Context, ec driver.EndpointConfig) (driver.EndpointInfo, error) {
	req := createEndpointMessage(ec)
	var res createEndpointResponse
	err := d.call(ctx, "CreateEndpoint", req, &res)
	var info driver.EndpointInfo
	if err == nil {
		info, err = endpointInfo(*req.Interface, res.Interface)
		err = d.replyError("CreateEndpoint", err)
	}
	err = d.undoOnDoubt(ctx, err, "DeleteEndpoint", func(ctx context.Context) error {
		return d.DeleteEndpoint(ctx, ec.NetworkID, ec.EndpointID)
	})
	return info, err
}

func createEndpointMessage(ec driver.EndpointConfig) createEndpointRequest {
	iface := &endpointInterface{}
	opts := map[string]any{}
	if ec.Addr4.IsValid() {
		iface.Address = ec.Addr4.String()
	}
	if ec.Addr6.IsValid() {
		iface.AddressIPv6 = ec.Addr6.String()
	}
	if ec.MAC != nil {
		iface.MacAddress = ec.MAC.String()
		opts[OptMACAddress] = ec.MAC // encoding/json writes it as base64, as Docker does
	}
	return createEndpointRequest{NetworkID: ec.NetworkID, EndpointID: ec.EndpointID, Interface: iface, Options: opts}
}

// filled is what a CreateEndpoint reply added to the interface.
type filled struct {
	Addr4, Addr6 netip.Prefix
	MAC          net.HardwareAddr
}

// mergeInterface applies the fill-only-empty rule and decodes what the plugin filled.
func mergeInterface(sent endpointInterface, got *endpointInterface) (filled, error) {
	var f filled
	if got == nil {
		return f, nil
	}
	var errs []string
	check := func(field, was, now string) bool {
		if now == "" {
			return false
		}
		if was != "" {
			errs = append(errs, fmt.Sprintf("%s was already set to %s and cannot be modified (reply: %s)", field, was, now))
			return false
		}
		return true
	}
	var err error
	if check("MacAddress", sent.MacAddress, got.MacAddress) {
		if f.MAC, err = net.ParseMAC(got.MacAddress); err != nil {
			errs = append(errs, fmt.Sprintf("invalid MacAddress %q", got.MacAddress))
		}
	}
	if check("Address", sent.Address, got.Address) {
		f.Addr4, err = parseIfAddr(got.Address, false)
		errs = appendErr(errs, err)
	}
	if check("AddressIPv6", sent.AddressIPv6, got.AddressIPv6) {
		f.Addr6, err = parseIfAddr(got.AddressIPv6, true)
		errs = appendErr(errs, err)
	}
	if len(errs) > 0 {
		return filled{}, errdefs.Internal("driver modified the endpoint's interface: %s", strings.Join(errs, "; "))
	}
	return f, nil
}

func appendErr(errs []string, err error) []string {
	if err != nil {
		return append(errs, err.Error())
	}
	return errs
}

func parseIfAddr(s string, v6 bool) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Is4() == v6 || p.Addr().Zone() != "" {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		return netip.Prefix{}, fmt.Errorf("invalid %s address %q (want address/length)", fam, s)
	}
	return p, nil
}

// endpointInfo turns what the plugin filled into the driver contract's EndpointInfo.
func endpointInfo(sent endpointInterface, got *endpointInterface) (driver.EndpointInfo, error) {
	f, err := mergeInterface(sent, got)
	if err != nil {
		return driver.EndpointInfo{}, err
	}
	return driver.EndpointInfo{MAC: f.MAC, Addr4: f.Addr4, Addr6: f.Addr6}, nil
}

// withBits formats a with the prefix length bits (Docker's "ip/poollen").
func withBits(a netip.Addr, bits int) string {
	return netip.PrefixFrom(a, bits).String()
}

// Join implements driver.Driver. The plugin names a host-side interface (SrcName) that
// the controller moves into the sandbox and renames to req.IfName.
func (d *Driver) Join(ctx context.Context, req driver.JoinRequest) (driver.JoinResult, error) {
	var res joinResponse
	err := d.call(ctx, "Join", joinRequest{NetworkID: req.NetworkID, EndpointID: req.EndpointID,
		SandboxKey: req.SandboxKey, Options: map[string]any{}}, &res)
	var jr joinReply
	if err == nil {
		jr, err = parseJoin(res)
		err = d.replyError("Join", err)
	}
	err = d.undoOnDoubt(ctx, err, "Leave", func(ctx context.Context) error {
		return d.Leave(ctx, req.NetworkID, req.EndpointID)
	})
	jr.Result.DstPrefix = jr.DstPrefix
	return jr.Result, err
}

// replyError names the plugin and method in the error of an unacceptable reply.
func (d *Driver) replyError(method string, err error) error {
	if err == nil {
		return nil
	}
	return errdefs.Wrap(errdefs.KindOf(err), fmt.Errorf("plugin %q: %s%s: %w", d.name, subsystem, method, err))
}

// joinReply is a decoded Join reply: the driver contract's result plus what it cannot
// carry yet.
type joinReply struct {
	Result    driver.JoinResult
	DstPrefix string // interface name prefix inside the sandbox ("eth" when empty)
}

// parseJoin validates and decodes a Join reply.
func parseJoin(res joinResponse) (joinReply, error) {
	var jr joinReply
	if res.InterfaceName == nil || res.InterfaceName.SrcName == "" {
		return jr, errdefs.Internal("join reply names no interface (InterfaceName.SrcName is empty)")
	}
	jr.Result.SrcName, jr.DstPrefix = res.InterfaceName.SrcName, res.InterfaceName.DstPrefix
	var err error
	if jr.Result.Gateway4, err = parseGateway("Gateway", res.Gateway, false); err != nil {
		return joinReply{}, err
	}
	if jr.Result.Gateway6, err = parseGateway("GatewayIPv6", res.GatewayIPv6, true); err != nil {
		return joinReply{}, err
	}
	for _, r := range res.StaticRoutes {
		sr, err := parseRoute(r)
		if err != nil {
			return joinReply{}, err
		}
		jr.Result.StaticRoutes = append(jr.Result.StaticRoutes, sr)
	}
	jr.Result.DisableGateway = res.DisableGatewayService
	return jr, nil
}

func parseGateway(field, s string, v6 bool) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Is6() != v6 || a.Zone() != "" {
		return netip.Addr{}, errdefs.Internal("join reply: invalid %s %q", field, s)
	}
	return a, nil
}

func parseRoute(r staticRoute) (driver.StaticRoute, error) {
	dst, err := netip.ParsePrefix(r.Destination)
	if err != nil {
		return driver.StaticRoute{}, errdefs.Internal("join reply: invalid static route destination %q", r.Destination)
	}
	sr := driver.StaticRoute{Destination: dst.Masked()}
	switch r.RouteType {
	case RouteConnected:
		return sr, nil
	case RouteNextHop:
		if sr.NextHop, err = netip.ParseAddr(r.NextHop); err != nil || sr.NextHop.Is4() != dst.Addr().Is4() {
			return driver.StaticRoute{}, errdefs.Internal("join reply: static route to %s has invalid NextHop %q", r.Destination, r.NextHop)
		}
		return sr, nil
	}
	return driver.StaticRoute{}, errdefs.Internal("join reply: static route to %s has unknown RouteType %d (0 = next hop, 1 = connected)", r.Destination, r.RouteType)
}

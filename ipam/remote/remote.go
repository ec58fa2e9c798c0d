// Package remote is the remote IPAM driver: it implements ipam.Allocator by calling a
// Docker IPAM plugin (the IpamDriver subsystem) through package plugin. Pool IDs are
// the plugin's own. A pool whose RequestPool reply carries a gateway
// (Data["com.docker.network.gateway"]) answers the controller's gateway request with
// it, without asking the plugin, as Docker does.
//
// Lock order: Allocator.mu only, never held during a call.
package remote

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/ipam"
	"github.com/piernet/pier/plugin"
)

const subsystem = plugin.IpamDriver + "."

// Capabilities are what the plugin declared (all false when it has no GetCapabilities).
type Capabilities struct {
	RequiresMACAddress    bool
	RequiresRequestReplay bool
}

// Allocator is an IPAM driver served by a plugin. Safe for concurrent use.
type Allocator struct {
	name          string
	c             *plugin.Client
	caps          Capabilities
	local, global string // the plugin's default address spaces
	log           *slog.Logger

	mu    sync.Mutex // guards pools
	pools map[string]poolInfo
}

// poolInfo is what the allocator remembers of a pool granted since it started.
type poolInfo struct {
	subnet  netip.Prefix
	gateway netip.Prefix // from the RequestPool reply's Data; zero if none
}

var _ ipam.Allocator = (*Allocator)(nil)

// New returns the allocator of an activated plugin, asking for its capabilities and
// default address spaces.
func New(ctx context.Context, p *plugin.Plugin, log *slog.Logger) (*Allocator, error) {
	if !p.Implementing(plugin.IpamDriver) {
		return nil, errdefs.NotFound("plugin %q is not an IPAM driver", p.Name)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Allocator{name: p.Name, c: p.Client, log: log.With("component", "remote-ipam", "plugin", p.Name),
		pools: map[string]poolInfo{}}
	var err error
	if a.caps, err = a.capabilities(ctx); err != nil {
		return nil, err
	}
	var res addressSpacesResponse
	if err := a.call(ctx, "GetDefaultAddressSpaces", nil, &res); err != nil {
		return nil, err
	}
	a.local, a.global = res.LocalDefaultAddressSpace, res.GlobalDefaultAddressSpace
	return a, nil
}

// capabilities calls the optional GetCapabilities: a plugin without it (404) has none.
func (a *Allocator) capabilities(ctx context.Context) (Capabilities, error) {
	var res capabilitiesResponse
	err := a.call(ctx, "GetCapabilities", nil, &res)
	if plugin.IsNotFound(err) {
		return Capabilities{}, nil
	}
	return Capabilities{RequiresMACAddress: res.RequiresMACAddress, RequiresRequestReplay: res.RequiresRequestReplay}, err
}

// Capabilities returns what the plugin declared. With RequiresRequestReplay the
// controller must request every recorded pool and address again at start-up; without
// it the plugin keeps its own state and must not be asked again.
func (a *Allocator) Capabilities() Capabilities { return a.caps }

// RequiresRequestReplay reports whether the controller must replay the recorded pool
// and address requests at start-up (see Capabilities).
func (a *Allocator) RequiresRequestReplay() bool { return a.caps.RequiresRequestReplay }

// RequiresMACAddress implements ipam.MACRequirer: the plugin wants the endpoint's MAC
// with every address request.
func (a *Allocator) RequiresMACAddress() bool { return a.caps.RequiresMACAddress }

// call makes one call; a reply with Error set is the plugin's refusal.
func (a *Allocator) call(ctx context.Context, method string, req any, resp plugin.Reply) error {
	return a.c.Do(ctx, subsystem+method, req, resp)
}

// RequestPool implements ipam.Allocator.
func (a *Allocator) RequestPool(ctx context.Context, req ipam.PoolRequest) (ipam.Pool, error) {
	var res requestPoolResponse
	if err := a.call(ctx, "RequestPool", a.poolMessage(req), &res); err != nil {
		return ipam.Pool{}, err
	}
	info, err := parsePool(res, req.V6 || req.Subnet.Addr().Is6())
	if err != nil {
		return ipam.Pool{}, a.releaseRejected(ctx, res.PoolID, fmt.Errorf("plugin %q: %sRequestPool: %w", a.name, subsystem, err))
	}
	a.mu.Lock()
	a.pools[res.PoolID] = info
	a.mu.Unlock()
	return ipam.Pool{ID: res.PoolID, Subnet: info.subnet, IPRange: req.IPRange, AddressSpace: a.space(req.AddressSpace)}, nil
}

func (a *Allocator) poolMessage(req ipam.PoolRequest) requestPoolRequest {
	m := requestPoolRequest{AddressSpace: a.space(req.AddressSpace), Options: req.Options,
		V6: req.V6 || req.Subnet.Addr().Is6()}
	if req.Subnet.IsValid() {
		m.Pool = req.Subnet.String()
	}
	if req.IPRange.IsValid() {
		m.SubPool = req.IPRange.String()
	}
	return m
}

// space maps pier's default address space names to the plugin's.
func (a *Allocator) space(s string) string {
	switch s {
	case "", ipam.SpaceLocal:
		return a.local
	case ipam.SpaceGlobal:
		return a.global
	}
	return s
}

func parsePool(res requestPoolResponse, v6 bool) (poolInfo, error) {
	if res.PoolID == "" {
		return poolInfo{}, errdefs.Internal("reply has no PoolID")
	}
	subnet, err := netip.ParsePrefix(res.Pool)
	if err != nil || subnet.Addr().Is6() != v6 || subnet.Addr().Zone() != "" {
		return poolInfo{}, errdefs.Internal("reply has invalid Pool %q (want an IPv%s CIDR)", res.Pool, family(v6))
	}
	info := poolInfo{subnet: subnet.Masked()}
	if gw, ok := res.Data[GatewayType]; ok {
		if info.gateway, err = netip.ParsePrefix(gw); err != nil || !info.subnet.Contains(info.gateway.Addr()) {
			return poolInfo{}, errdefs.Internal("reply has invalid gateway %q for pool %s", gw, info.subnet)
		}
	}
	return info, nil
}

func family(v6 bool) string {
	if v6 {
		return "6"
	}
	return "4"
}

// releaseRejected gives back a pool whose reply pier could not accept.
func (a *Allocator) releaseRejected(ctx context.Context, poolID string, cause error) error {
	if poolID == "" {
		return cause
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.c.Timeout())
	defer cancel()
	if err := a.call(uctx, "ReleasePool", releasePoolRequest{PoolID: poolID}, &response{}); err != nil {
		return fmt.Errorf("%w; releasing the pool again failed: %v", cause, err)
	}
	return cause
}

// ReleasePool implements ipam.Allocator.
func (a *Allocator) ReleasePool(ctx context.Context, poolID string) error {
	if err := a.call(ctx, "ReleasePool", releasePoolRequest{PoolID: poolID}, &response{}); err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.pools, poolID)
	a.mu.Unlock()
	return nil
}

// RequestAddress implements ipam.Allocator. A gateway request carries
// RequestAddressType=com.docker.network.gateway; when the pool came with a gateway and
// none was asked for, that one is returned without a call.
func (a *Allocator) RequestAddress(ctx context.Context, req ipam.AddressRequest) (netip.Prefix, error) {
	info, known := a.pool(req.PoolID)
	if req.Gateway && !req.Addr.IsValid() && info.gateway.IsValid() {
		return info.gateway, nil
	}
	m := requestAddressRequest{PoolID: req.PoolID}
	if req.Addr.IsValid() {
		m.Address = req.Addr.String()
	}
	if req.Gateway {
		m.Options = map[string]string{OptRequestAddressType: GatewayType}
	}
	if req.MAC != nil && a.caps.RequiresMACAddress {
		if m.Options == nil {
			m.Options = map[string]string{}
		}
		m.Options[OptMACAddress] = req.MAC.String()
	}
	var res requestAddressResponse
	if err := a.call(ctx, "RequestAddress", m, &res); err != nil {
		return netip.Prefix{}, err
	}
	addr, err := parseAddress(res.Address, info.subnet, known)
	if err != nil {
		return netip.Prefix{}, a.releaseAddrRejected(ctx, req.PoolID, addr, fmt.Errorf("plugin %q: %sRequestAddress: %w", a.name, subsystem, err))
	}
	return addr, nil
}

func (a *Allocator) pool(id string) (poolInfo, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.pools[id]
	return p, ok
}

// parseAddress decodes an "ip/len" reply. For a pool granted since start-up the address
// must lie in it; on error the returned prefix is what was parsed, if anything.
func parseAddress(s string, subnet netip.Prefix, known bool) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, errdefs.Unavailable("no address returned")
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || p.Addr().Zone() != "" {
		return netip.Prefix{}, errdefs.Internal("reply has invalid Address %q (want address/length)", s)
	}
	if known && !subnet.Contains(p.Addr()) {
		return p, errdefs.Internal("reply address %s is not in pool %s", p, subnet)
	}
	return p, nil
}

// releaseAddrRejected gives back an address whose reply pier could not accept.
func (a *Allocator) releaseAddrRejected(ctx context.Context, poolID string, p netip.Prefix, cause error) error {
	if !p.IsValid() {
		return cause
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.c.Timeout())
	defer cancel()
	if err := a.ReleaseAddress(uctx, poolID, p.Addr()); err != nil {
		return fmt.Errorf("%w; releasing it again failed: %v", cause, err)
	}
	return cause
}

// ReleaseAddress implements ipam.Allocator.
func (a *Allocator) ReleaseAddress(ctx context.Context, poolID string, addr netip.Addr) error {
	return a.call(ctx, "ReleaseAddress", releaseAddressRequest{PoolID: poolID, Address: addr.String()}, &response{})
}

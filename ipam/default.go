package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/piernet/pier/errdefs"
)

// Config configures the default allocator. The zero Config gives Docker's defaults.
type Config struct {
	LocalPools  []PredefinedPool // nil = DefaultLocalPools(); empty = no automatic pools
	GlobalPools []PredefinedPool // nil = DefaultGlobalPools(); empty = no automatic pools
	LocalV6Pool PredefinedPool   // zero = DefaultV6Pool(V6Seed)
	// GlobalV6Pool serves automatic IPv6 pools in SpaceGlobal; zero =
	// DefaultV6Pool(V6Seed + "/global"), a ULA /48 distinct from the local one.
	GlobalV6Pool PredefinedPool
	V6Seed       string // seed the default ULA /48s are derived from (e.g. machine id)
	// IsRouted reports whether a candidate auto-chosen subnet overlaps something routed
	// on the host; nil = nothing is. Only consulted for automatically chosen pools. It
	// is called with the allocator's lock held and must not call back into it.
	IsRouted func(netip.Prefix) bool
}

// globalV6SeedSuffix separates the global-space ULA from the local one.
const globalV6SeedSuffix = "/global"

// Default is pier's built-in Allocator. Pools live in two address spaces, SpaceLocal
// and SpaceGlobal; pools of one space never overlap, pools of different spaces may.
// It is safe for concurrent use: one mutex guards all state, nothing else locks.
type Default struct {
	spaces   map[string]autoPools // immutable after New
	isRouted func(netip.Prefix) bool

	mu    sync.Mutex       // guards the fields below
	pools map[string]*pool // by pool ID
}

var _ Allocator = (*Default)(nil)

// autoPools lists, per family, the predefined pools a space picks subnets from.
type autoPools struct {
	v4, v6 []PredefinedPool
}

// New validates cfg and returns an allocator with no pools.
func New(cfg Config) (*Default, error) {
	local, err := newAutoPools(cfg.LocalPools, DefaultLocalPools(), cfg.LocalV6Pool, DefaultV6Pool(cfg.V6Seed))
	if err != nil {
		return nil, fmt.Errorf("local address pools: %w", err)
	}
	global, err := newAutoPools(cfg.GlobalPools, DefaultGlobalPools(), cfg.GlobalV6Pool,
		DefaultV6Pool(cfg.V6Seed+globalV6SeedSuffix))
	if err != nil {
		return nil, fmt.Errorf("global address pools: %w", err)
	}
	isRouted := cfg.IsRouted
	if isRouted == nil {
		isRouted = func(netip.Prefix) bool { return false }
	}
	return &Default{
		spaces:   map[string]autoPools{SpaceLocal: local, SpaceGlobal: global},
		isRouted: isRouted,
		pools:    map[string]*pool{},
	}, nil
}

// newAutoPools validates pools and the dedicated IPv6 pool, applying defaults, and
// sorts them by family. IPv6 entries of pools come before the dedicated IPv6 pool.
func newAutoPools(pools, defPools []PredefinedPool, v6, defV6 PredefinedPool) (autoPools, error) {
	if pools == nil {
		pools = defPools
	}
	if v6 == (PredefinedPool{}) {
		v6 = defV6
	}
	if !v6.Base.Addr().Is6() {
		return autoPools{}, errdefs.InvalidArgument("IPv6 pool %s is not IPv6", v6)
	}
	var a autoPools
	for _, p := range append(slices.Clip(pools), v6) {
		if err := p.validate(); err != nil {
			return autoPools{}, errdefs.InvalidArgument("address pool %s: %w", p, err)
		}
		if p.Base.Addr().Is4() {
			a.v4 = append(a.v4, p)
		} else {
			a.v6 = append(a.v6, p)
		}
	}
	return a, nil
}

// RequestPool grants the requested subnet, or picks one from the predefined pools
// when req.Subnet is zero. Subnet and IPRange are masked to canonical form. req.V6
// only selects the family of an automatic pool, but V6 with an IPv4 Subnet is an
// InvalidArgument. Automatic IPv6 pools in SpaceGlobal come from Config.GlobalV6Pool.
func (d *Default) RequestPool(_ context.Context, req PoolRequest) (Pool, error) {
	space, err := d.space(req.AddressSpace)
	if err != nil {
		return Pool{}, err
	}
	subnet, ipRange, err := checkPoolRequest(req)
	if err != nil {
		return Pool{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if subnet.IsValid() {
		err = d.checkFreeLocked(space, subnet, req.Network)
	} else {
		subnet, err = d.pickLocked(space, req)
	}
	if err != nil {
		return Pool{}, err
	}
	p := newPool(space, req.Network, subnet, ipRange)
	d.pools[p.id] = p
	return p.info(), nil
}

func (d *Default) space(name string) (string, error) {
	if name == "" {
		name = SpaceLocal
	}
	if _, ok := d.spaces[name]; !ok {
		return "", errdefs.InvalidArgument("unknown address space %q: want %q or %q", name, SpaceLocal, SpaceGlobal)
	}
	return name, nil
}

// checkPoolRequest validates the request's prefixes and returns them canonical.
func checkPoolRequest(req PoolRequest) (subnet, ipRange netip.Prefix, err error) {
	if subnet, err = optionalPrefix(req.Subnet, "subnet", req.Network); err != nil {
		return subnet, ipRange, err
	}
	if ipRange, err = optionalPrefix(req.IPRange, "ip-range", req.Network); err != nil {
		return subnet, ipRange, err
	}
	return subnet, ipRange, checkPoolFamilies(req, subnet, ipRange)
}

// optionalPrefix canonicalises p; the zero Prefix stays zero.
func optionalPrefix(p netip.Prefix, what, network string) (netip.Prefix, error) {
	if p == (netip.Prefix{}) {
		return p, nil
	}
	c, err := canonicalPrefix(p)
	if err != nil {
		return c, fmt.Errorf("%s of network %q: %w", what, network, err)
	}
	return c, nil
}

func checkPoolFamilies(req PoolRequest, subnet, ipRange netip.Prefix) error {
	switch {
	case req.V6 && subnet.Addr().Is4():
		return errdefs.InvalidArgument("IPv6 pool requested for network %q with IPv4 subnet %s", req.Network, subnet)
	case !ipRange.IsValid():
		return nil
	case !subnet.IsValid():
		return errdefs.InvalidArgument("ip-range %s of network %q needs a subnet", ipRange, req.Network)
	case ipRange.Addr().Is4() != subnet.Addr().Is4():
		return errdefs.InvalidArgument("ip-range %s and subnet %s of network %q are of different IP families",
			ipRange, subnet, req.Network)
	case ipRange.Bits() < subnet.Bits() || !subnet.Contains(ipRange.Addr()):
		return errdefs.InvalidArgument("ip-range %s is not inside subnet %s of network %q", ipRange, subnet, req.Network)
	}
	return nil
}

// checkFreeLocked fails with Forbidden (Docker: 403) when subnet overlaps a pool of space.
func (d *Default) checkFreeLocked(space string, subnet netip.Prefix, network string) error {
	other := d.overlapLocked(space, subnet)
	if other == nil {
		return nil
	}
	return errdefs.Forbidden("subnet %s for network %q overlaps %s of network %q in address space %s",
		subnet, network, other.subnet, other.network, space)
}

// overlapLocked returns a pool of space overlapping subnet, or nil.
func (d *Default) overlapLocked(space string, subnet netip.Prefix) *pool {
	for _, p := range d.pools {
		if p.space == space && p.subnet.Overlaps(subnet) {
			return p
		}
	}
	return nil
}

// pickLocked returns the first predefined subnet of the wanted family that overlaps
// no pool of space and nothing routed on the host.
func (d *Default) pickLocked(space string, req PoolRequest) (netip.Prefix, error) {
	auto, fam := d.spaces[space].v4, "IPv4"
	if req.V6 {
		auto, fam = d.spaces[space].v6, "IPv6"
	}
	for _, pp := range auto {
		if subnet, ok := d.pickFromLocked(space, pp); ok {
			return subnet, nil
		}
	}
	return netip.Prefix{}, errdefs.Unavailable(
		"could not find an available, non-overlapping %s address pool among the defaults to assign to the network %q",
		fam, req.Network)
}

// pickFromLocked walks pp's subnets in order. When a candidate overlaps a pool it
// skips past both, so a crowded space costs one step per existing pool.
func (d *Default) pickFromLocked(space string, pp PredefinedPool) (netip.Prefix, bool) {
	c := netip.PrefixFrom(pp.Base.Addr(), pp.Size)
	for c.IsValid() && pp.Base.Contains(c.Addr()) {
		end := lastAddr(c)
		if other := d.overlapLocked(space, c); other != nil {
			end = maxAddr(end, lastAddr(other.subnet))
		} else if !d.isRouted(c) {
			return c, true
		}
		c = netip.PrefixFrom(end.Next(), pp.Size)
	}
	return netip.Prefix{}, false
}

// ReleasePool releases the pool and every address in it; its subnet may be reused.
func (d *Default) ReleasePool(_ context.Context, poolID string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.pools[poolID]; !ok {
		return errdefs.NotFound("address pool %q not found", poolID)
	}
	delete(d.pools, poolID)
	return nil
}

// RequestAddress allocates an address in a pool; see AddressRequest.
func (d *Default) RequestAddress(_ context.Context, req AddressRequest) (netip.Prefix, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, err := d.poolLocked(req.PoolID)
	if err != nil {
		return netip.Prefix{}, err
	}
	a, err := p.request(req)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, p.subnet.Bits()), nil
}

// ReleaseAddress frees an address allocated by RequestAddress.
func (d *Default) ReleaseAddress(_ context.Context, poolID string, addr netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, err := d.poolLocked(poolID)
	if err != nil {
		return err
	}
	return p.release(addr)
}

func (d *Default) poolLocked(id string) (*pool, error) {
	p, ok := d.pools[id]
	if !ok {
		return nil, errdefs.NotFound("address pool %q not found", id)
	}
	return p, nil
}

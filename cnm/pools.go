package cnm

import (
	"context"
	"net/netip"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/ipam"
)

// allocatePools requests the network's pools, gateways and auxiliary addresses and
// records them in n. Without an IPv4 spec an automatic IPv4 pool is used; with
// EnableIPv6 and no IPv6 spec, an automatic IPv6 pool.
func (c *Controller) allocatePools(ctx context.Context, n *Network, specs []PoolSpec, u *undo.Stack) error {
	if n.IPAMDriver == IPAMNull {
		return nil
	}
	v4, v6, err := splitFamilies(specs)
	if err != nil {
		return err
	}
	if n.IPAMDriver == IPAMDefault {
		if err := checkRoomy(append(append([]PoolSpec{}, v4...), v6...)); err != nil {
			return err
		}
	}
	if len(v6) > 0 {
		n.EnableIPv6 = true
	}
	if n.DisableIPv4 {
		switch {
		case len(v4) > 0:
			return errdefs.InvalidArgument("network %s: IPv4 is disabled, but an IPv4 subnet was given (%s)", n.Name, v4[0].Subnet)
		case !n.EnableIPv6:
			return errdefs.InvalidArgument("network %s: IPv4 is disabled and IPv6 is not enabled: enable IPv6 (--ipv6) or keep IPv4", n.Name)
		}
	} else if len(v4) == 0 {
		v4 = []PoolSpec{{}}
	}
	if n.EnableIPv6 && len(v6) == 0 {
		v6 = []PoolSpec{{}}
	}
	for _, s := range v4 {
		p, err := c.allocatePool(ctx, n, s, false, u)
		if err != nil {
			return err
		}
		n.IPv4 = append(n.IPv4, p)
	}
	for _, s := range v6 {
		p, err := c.allocatePool(ctx, n, s, true, u)
		if err != nil {
			return err
		}
		n.IPv6 = append(n.IPv6, p)
	}
	return nil
}

func splitFamilies(specs []PoolSpec) (v4, v6 []PoolSpec, err error) {
	for _, s := range specs {
		fam, ferr := specFamily(s)
		if ferr != nil {
			return nil, nil, ferr
		}
		if fam == 6 {
			v6 = append(v6, s)
		} else {
			v4 = append(v4, s)
		}
	}
	return v4, v6, nil
}

func specFamily(s PoolSpec) (int, error) {
	if !s.Subnet.IsValid() {
		if s.IPRange.IsValid() || s.Gateway.IsValid() {
			return 0, errdefs.InvalidArgument("ip-range and gateway need a subnet")
		}
		return 4, nil
	}
	is6 := s.Subnet.Addr().Is6()
	for _, a := range []netip.Addr{s.IPRange.Addr(), s.Gateway} {
		if a.IsValid() && a.Is6() != is6 {
			return 0, errdefs.InvalidArgument("address %s and subnet %s are of different families", a, s.Subnet)
		}
	}
	if is6 {
		return 6, nil
	}
	return 4, nil
}

func (c *Controller) allocatePool(ctx context.Context, n *Network, s PoolSpec, v6 bool, u *undo.Stack) (Pool, error) {
	alloc, err := c.allocator(ctx, n.IPAMDriver)
	if err != nil {
		return Pool{}, err
	}
	gw := s.Gateway
	if gw.IsUnspecified() {
		gw = netip.Addr{}
	}
	granted, err := alloc.RequestPool(ctx, ipam.PoolRequest{AddressSpace: n.addressSpace(), Subnet: s.Subnet,
		IPRange: s.IPRange, V6: v6, Network: n.Name, Options: n.IPAMOptions})
	if err != nil {
		return Pool{}, err
	}
	u.Push(func() error { return alloc.ReleasePool(context.WithoutCancel(ctx), granted.ID) })
	p := Pool{PoolID: granted.ID, AddressSpace: granted.AddressSpace, Subnet: granted.Subnet, IPRange: granted.IPRange}
	if p.Gateway, err = alloc.RequestAddress(ctx, ipam.AddressRequest{PoolID: granted.ID, Addr: gw, Gateway: true}); err != nil {
		return Pool{}, errdefs.Wrap(errdefs.KindOf(err), prefixErr("gateway", err))
	}
	for name, a := range s.Aux {
		if _, err := alloc.RequestAddress(ctx, ipam.AddressRequest{PoolID: granted.ID, Addr: a}); err != nil {
			return Pool{}, errdefs.Wrap(errdefs.KindOf(err), prefixErr("auxiliary address "+name, err))
		}
		if p.Aux == nil {
			p.Aux = map[string]netip.Addr{}
		}
		p.Aux[name] = a
	}
	return p, nil
}

// addressSpace is the default address space of the network's scope, as Docker picks
// it: global-scope drivers get their pools from the global default space.
func (n *Network) addressSpace() string {
	if n.Scope == driver.ScopeGlobal {
		return ipam.SpaceGlobal
	}
	return ipam.SpaceLocal
}

type labelled struct {
	label string
	err   error
}

func (l labelled) Error() string { return l.label + ": " + l.err.Error() }
func (l labelled) Unwrap() error { return l.err }

func prefixErr(label string, err error) error { return labelled{label, err} }

// releasePools gives back everything allocatePools took; errors are logged only, since
// the network is already gone from the kernel and the store.
func (c *Controller) releasePools(ctx context.Context, n *Network) {
	alloc, err := c.allocator(ctx, n.IPAMDriver)
	if err != nil {
		c.log.WarnContext(ctx, "releasing pools", "network", n.Name, "err", err)
		return
	}
	for _, p := range append(append([]Pool{}, n.IPv4...), n.IPv6...) {
		// As Docker: gateway and auxiliary addresses first, then the pool (plugins
		// may refuse to release a pool that still has addresses).
		for _, a := range p.reserved() {
			if err := alloc.ReleaseAddress(ctx, p.PoolID, a); err != nil {
				c.log.WarnContext(ctx, "releasing address", "network", n.Name, "addr", a, "err", err)
			}
		}
		if err := alloc.ReleasePool(ctx, p.PoolID); err != nil {
			c.log.WarnContext(ctx, "releasing pool", "network", n.Name, "pool", p.PoolID, "err", err)
		}
	}
}

// reserved lists the pool's gateway and auxiliary addresses.
func (p Pool) reserved() []netip.Addr {
	var out []netip.Addr
	if p.Gateway.IsValid() {
		out = append(out, p.Gateway.Addr())
	}
	for _, a := range p.Aux {
		out = append(out, a)
	}
	return out
}

// restorePools re-requests a recorded network's pools exactly as recorded.
func (c *Controller) restorePools(ctx context.Context, n *Network) error {
	if !c.needsReplay(ctx, n) {
		return nil
	}
	var u undo.Stack
	for _, p := range append(append([]Pool{}, n.IPv4...), n.IPv6...) {
		spec := PoolSpec{Subnet: p.Subnet, IPRange: p.IPRange, Gateway: validAddr(p.Gateway), Aux: p.Aux}
		if _, err := c.allocatePool(ctx, n, spec, p.Subnet.Addr().Is6(), &u); err != nil {
			return u.Rollback(err)
		}
	}
	u.Release()
	return nil
}

// poolFor returns the pool of pools (one family's) that contains want; with a zero
// want, the first pool.
func poolFor(pools []Pool, want netip.Addr) (Pool, bool) {
	for _, p := range pools {
		if !want.IsValid() || p.Subnet.Contains(want) {
			return p, true
		}
	}
	return Pool{}, false
}

// needsReplay reports whether n's IPAM driver must be told again, after a restart, about
// the pools and addresses the records hold. Plugins that keep their own state say no.
func (c *Controller) needsReplay(ctx context.Context, n *Network) bool {
	if n.global() {
		return false // the cluster store holds global pools and addresses
	}
	alloc, err := c.allocator(ctx, n.IPAMDriver)
	if err != nil {
		return false
	}
	r, ok := alloc.(interface{ RequiresRequestReplay() bool })
	return !ok || r.RequiresRequestReplay()
}

// checkRoomy refuses subnets too small to hold an endpoint besides the gateway and the
// subnet's own addresses (IPv4 /31 and /32, IPv6 /127 and /128): a network on one
// could never take a connect.
func checkRoomy(specs []PoolSpec) error {
	for _, s := range specs {
		if !s.Subnet.IsValid() {
			continue
		}
		limit, least := 30, "/30"
		if s.Subnet.Addr().Is6() {
			limit, least = 126, "/126"
		}
		if s.Subnet.Bits() > limit {
			return errdefs.InvalidArgument("subnet %s is too small for a network: with its gateway it leaves no address for an endpoint (use %s or larger)", s.Subnet, least)
		}
	}
	return nil
}

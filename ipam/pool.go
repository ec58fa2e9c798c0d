package ipam

import (
	"net/netip"

	"github.com/piernet/pier/errdefs"
)

// pool is the state of one granted pool. Default.mu guards it.
type pool struct {
	id      string
	space   string
	network string
	subnet  netip.Prefix // canonical
	ipRange netip.Prefix // canonical, inside subnet; zero when unset
	usable  bounds       // addresses of subnet that may be handed out
	dynamic bounds       // where zero-Addr requests come from; may be empty
	used    addrSet
	cursor  netip.Addr // where the next dynamic search starts; inside dynamic
}

func newPool(space, network string, subnet, ipRange netip.Prefix) *pool {
	p := &pool{space: space, network: network, subnet: subnet, ipRange: ipRange}
	p.id = poolID(space, subnet, ipRange)
	p.usable = usable(subnet)
	p.dynamic = p.usable
	if ipRange.IsValid() {
		p.dynamic = p.usable.intersect(span(ipRange))
	}
	p.cursor = p.dynamic.first
	return p
}

// poolID is deterministic, so the same request after a restart gets the same ID.
func poolID(space string, subnet, ipRange netip.Prefix) string {
	id := space + "/" + subnet.String()
	if ipRange.IsValid() {
		id += "/" + ipRange.String()
	}
	return id
}

func (p *pool) info() Pool {
	return Pool{ID: p.id, Subnet: p.subnet, IPRange: p.ipRange, AddressSpace: p.space}
}

// request serves an AddressRequest for this pool.
func (p *pool) request(req AddressRequest) (netip.Addr, error) {
	switch {
	case req.Addr.IsValid():
		return p.reserve(req.Addr.Unmap().WithZone(""))
	case req.Gateway:
		return p.takeFirstFree()
	}
	return p.takeNext()
}

// reserve allocates a specific address.
func (p *pool) reserve(a netip.Addr) (netip.Addr, error) {
	if err := p.checkReservable(a); err != nil {
		return netip.Addr{}, err
	}
	p.used.add(a)
	return a, nil
}

func (p *pool) checkReservable(a netip.Addr) error {
	switch {
	case !p.subnet.Contains(a):
		return errdefs.InvalidArgument("address %s is not in subnet %s of network %q", a, p.subnet, p.network)
	case !p.usable.contains(a):
		return errdefs.InvalidArgument("address %s is the %s address of subnet %s of network %q",
			a, reservedName(a, p.subnet), p.subnet, p.network)
	case p.used.contains(a):
		return errdefs.Forbidden("address %s already in use on network %q", a, p.network)
	}
	return nil
}

// reservedName names the role of a subnet address that is never handed out.
func reservedName(a netip.Addr, subnet netip.Prefix) string {
	switch {
	case a != subnet.Addr():
		return "broadcast"
	case a.Is6():
		return "subnet-router anycast"
	}
	return "network"
}

// takeFirstFree allocates the lowest free usable address of the subnet (the default
// gateway: normally the first usable address), ignoring IPRange and the cursor.
func (p *pool) takeFirstFree() (netip.Addr, error) {
	a, ok := p.used.nextFree(p.usable.first, p.usable.last)
	if !ok {
		return netip.Addr{}, p.fullError(p.usable)
	}
	p.used.add(a)
	return a, nil
}

// takeNext allocates serially: the first free address at or after the cursor,
// wrapping around once, so a just-released address is not immediately reused.
func (p *pool) takeNext() (netip.Addr, error) {
	a, ok := p.used.nextFree(p.cursor, p.dynamic.last)
	if !ok {
		a, ok = p.used.nextFree(p.dynamic.first, p.dynamic.last)
	}
	if !ok {
		return netip.Addr{}, p.fullError(p.dynamic)
	}
	p.used.add(a)
	p.cursor = a.Next()
	if !p.dynamic.contains(p.cursor) {
		p.cursor = p.dynamic.first
	}
	return a, nil
}

func (p *pool) fullError(b bounds) error {
	fam := family(p.subnet.Addr())
	if b == p.usable {
		return errdefs.Unavailable("no available %s addresses on network %q", fam, p.network)
	}
	return errdefs.Unavailable("no available %s addresses in ip-range %s on network %q", fam, p.ipRange, p.network)
}

func (p *pool) release(a netip.Addr) error {
	if !p.used.remove(a.Unmap().WithZone("")) {
		return errdefs.NotFound("address %s is not allocated on network %q (pool %s)", a, p.network, p.id)
	}
	return nil
}

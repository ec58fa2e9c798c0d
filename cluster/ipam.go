package cluster

import (
	"context"
	"math/big"
	"math/rand/v2"
	"net/netip"
	"strings"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/ipam"
)

// Global default pools: IPv4 10.0.0.0/8 in /24s (Docker swarm's default), IPv6 /64s of
// a fixed ULA /48.
var (
	defaultPool4 = netip.MustParsePrefix("10.0.0.0/8")
	defaultPool6 = netip.MustParsePrefix("fdc0:9e4:cafe::/48")
)

const (
	defaultSize4 = 24
	defaultSize6 = 64
)

// IPAM returns the allocator of the global address space. Pools are one list under a
// single key, changed by compare-and-swap (pools are few and change rarely: one key
// makes overlap checks exact); addresses are one key each, created only if absent, so
// two nodes can never hand out the same address and contention is per address.
func (c *Cluster) IPAM() ipam.Allocator { return globalIPAM{c} }

type globalIPAM struct{ c *Cluster }

func (g globalIPAM) RequestPool(ctx context.Context, req ipam.PoolRequest) (ipam.Pool, error) {
	ctx, cancel := g.c.opContext(ctx)
	defer cancel()
	for range 20 {
		kv, _, err := g.c.kv.Get(ctx, keyPools)
		if err != nil {
			return ipam.Pool{}, storeErr(err)
		}
		list, err := decodePools(kv.Value)
		if err != nil {
			return ipam.Pool{}, err
		}
		subnet, err := pickPool(list, req)
		if err != nil {
			return ipam.Pool{}, err
		}
		if req.IPRange.IsValid() && !subnet.Contains(req.IPRange.Addr()) {
			return ipam.Pool{}, errdefs.InvalidArgument("ip-range %s is not inside subnet %s of network %q", req.IPRange, subnet, req.Network)
		}
		p := globalPool{ID: subnet.String(), Subnet: subnet, IPRange: req.IPRange, Network: req.Network}
		list.Pools = append(list.Pools, p)
		ok, _, err := Swap(ctx, g.c.kv, keyPools, kv.ModRev, mustJSON(list), 0)
		if err != nil {
			return ipam.Pool{}, storeErr(err)
		}
		if ok {
			return ipam.Pool{ID: p.ID, Subnet: subnet, IPRange: req.IPRange, AddressSpace: ipam.SpaceGlobal}, nil
		}
	}
	return ipam.Pool{}, errdefs.Unavailable("could not allocate a pool: too much contention, try again")
}

// pickPool checks a user subnet against the claimed pools, or finds a free default one.
func pickPool(list poolList, req ipam.PoolRequest) (netip.Prefix, error) {
	overlap := func(p netip.Prefix) *globalPool {
		for i := range list.Pools {
			if list.Pools[i].Subnet.Overlaps(p) {
				return &list.Pools[i]
			}
		}
		return nil
	}
	if req.Subnet.IsValid() {
		if o := overlap(req.Subnet); o != nil {
			return netip.Prefix{}, errdefs.Forbidden("invalid pool request: pool %s overlaps with pool %s of network %q in the global address space", req.Subnet, o.Subnet, o.Network)
		}
		return req.Subnet.Masked(), nil
	}
	base, size := defaultPool4, defaultSize4
	if req.V6 {
		base, size = defaultPool6, defaultSize6
	}
	for p := netip.PrefixFrom(base.Addr(), size); base.Contains(p.Addr()); p = nextPrefix(p) {
		if overlap(p) == nil {
			return p, nil
		}
	}
	return netip.Prefix{}, errdefs.Unavailable("no global address pool left in %s for network %q", base, req.Network)
}

// nextPrefix is the prefix of the same length right after p.
func nextPrefix(p netip.Prefix) netip.Prefix {
	n := new(big.Int).SetBytes(p.Addr().AsSlice())
	step := new(big.Int).Lsh(big.NewInt(1), uint(p.Addr().BitLen()-p.Bits()))
	n.Add(n, step)
	b := n.FillBytes(make([]byte, p.Addr().BitLen()/8+1))[1:] // overflow lands in the dropped byte
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, p.Bits())
}

func (g globalIPAM) pool(ctx context.Context, id string) (globalPool, int64, error) {
	kv, _, err := g.c.kv.Get(ctx, keyPools)
	if err != nil {
		return globalPool{}, 0, storeErr(err)
	}
	list, err := decodePools(kv.Value)
	if err != nil {
		return globalPool{}, 0, err
	}
	for _, p := range list.Pools {
		if p.ID == id {
			return p, kv.ModRev, nil
		}
	}
	return globalPool{}, 0, errdefs.NotFound("address pool %q not found in the global address space", id)
}

func (g globalIPAM) ReleasePool(ctx context.Context, id string) error {
	ctx, cancel := g.c.opContext(ctx)
	defer cancel()
	for range 20 {
		kv, _, err := g.c.kv.Get(ctx, keyPools)
		if err != nil {
			return storeErr(err)
		}
		list, err := decodePools(kv.Value)
		if err != nil {
			return err
		}
		kept := list.Pools[:0:0]
		for _, p := range list.Pools {
			if p.ID != id {
				kept = append(kept, p)
			}
		}
		r, err := g.c.kv.Txn(ctx, []Cmp{Unchanged(keyPools, kv.ModRev)},
			[]Op{Put(keyPools, mustJSON(poolList{Pools: kept}), 0), DeleteUnder(prefAddrs + escape(id) + "/")})
		if err != nil {
			return storeErr(err)
		}
		if r.Succeeded {
			return nil
		}
	}
	return errdefs.Unavailable("could not release pool %s: too much contention, try again", id)
}

func (g globalIPAM) RequestAddress(ctx context.Context, req ipam.AddressRequest) (netip.Prefix, error) {
	ctx, cancel := g.c.opContext(ctx)
	defer cancel()
	p, _, err := g.pool(ctx, req.PoolID)
	if err != nil {
		return netip.Prefix{}, err
	}
	owner := "endpoint"
	if req.Gateway {
		owner = "gateway"
	}
	want := req.Addr
	if !want.IsValid() && req.Gateway {
		want = p.Subnet.Addr().Next()
	}
	if want.IsValid() {
		if err := checkUsable(p, want); err != nil {
			return netip.Prefix{}, err
		}
		ok, _, err := Create(ctx, g.c.kv, addrKey(p.ID, want), []byte(owner), 0)
		if err != nil {
			return netip.Prefix{}, storeErr(err)
		}
		if !ok {
			return netip.Prefix{}, errdefs.Forbidden("address %s already in use on network %q", want, p.Network)
		}
		return netip.PrefixFrom(want, p.Subnet.Bits()), nil
	}
	return g.anyAddress(ctx, p, owner)
}

func checkUsable(p globalPool, a netip.Addr) error {
	switch {
	case !p.Subnet.Contains(a):
		return errdefs.InvalidArgument("address %s is not in subnet %s of network %q", a, p.Subnet, p.Network)
	case a == p.Subnet.Addr() && p.Subnet.Bits() < a.BitLen()-1:
		return errdefs.InvalidArgument("address %s is the network address of subnet %s of network %q", a, p.Subnet, p.Network)
	}
	return nil
}

// anyAddress takes a free address: it lists the pool's taken ones once, then tries
// to create candidates from a random starting point, so requests racing from many
// nodes rarely want the same address; a lost race moves on to the next candidate, and
// the list is read again only after many lost races.
func (g globalIPAM) anyAddress(ctx context.Context, p globalPool, owner string) (netip.Prefix, error) {
	from := p.Subnet
	if p.IPRange.IsValid() {
		from = p.IPRange
	}
	prefix := prefAddrs + escape(p.ID) + "/"
	for range 5 {
		used, _, err := g.c.kv.List(ctx, prefix, 0)
		if err != nil {
			return netip.Prefix{}, storeErr(err)
		}
		taken := make(map[netip.Addr]bool, len(used))
		for _, kv := range used {
			if a, err := netip.ParseAddr(strings.TrimPrefix(kv.Key, prefix)); err == nil {
				taken[a] = true
			}
		}
		for try := range 20 {
			// The lowest free address first (what users expect: .2, .3, …); after a
			// lost race, random ones, so nodes racing for addresses spread out.
			cand, ok := freeAddr(from, p.Subnet, taken, try > 0)
			if !ok {
				return netip.Prefix{}, errdefs.Unavailable("no available addresses on network %q (subnet %s)", p.Network, from)
			}
			created, _, err := Create(ctx, g.c.kv, addrKey(p.ID, cand), []byte(owner), 0)
			if err != nil {
				return netip.Prefix{}, storeErr(err)
			}
			if created {
				return netip.PrefixFrom(cand, p.Subnet.Bits()), nil
			}
			taken[cand] = true
		}
	}
	return netip.Prefix{}, errdefs.Unavailable("could not allocate an address on network %q: too much contention, try again", p.Network)
}

// freeAddr scans r (inside subnet) from its start (or a random offset) for an address not in taken,
// skipping the subnet's network and broadcast addresses.
func freeAddr(r, subnet netip.Prefix, taken map[netip.Addr]bool, random bool) (netip.Addr, bool) {
	hostBits := r.Addr().BitLen() - r.Bits()
	size := uint64(1) << min(hostBits, 20) // scan at most 2^20 addresses
	var start uint64
	if random {
		start = rand.Uint64N(size)
	}
	first := r.Masked().Addr()
	for i := uint64(0); i < size; i++ {
		a := addN(first, (start+i)%size)
		if taken[a] || a == subnet.Addr() || isBroadcast(a, subnet) {
			continue
		}
		return a, true
	}
	return netip.Addr{}, false
}

func addN(a netip.Addr, n uint64) netip.Addr {
	b := a.AsSlice()
	for i := len(b) - 1; i >= 0 && n > 0; i-- {
		sum := uint64(b[i]) + n&0xff
		b[i] = byte(sum)
		n = n>>8 + sum>>8
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}

func isBroadcast(a netip.Addr, subnet netip.Prefix) bool {
	if !a.Is4() || subnet.Bits() >= 31 {
		return false
	}
	last := addN(subnet.Masked().Addr(), uint64(1)<<(32-subnet.Bits())-1)
	return a == last
}

func (g globalIPAM) ReleaseAddress(ctx context.Context, poolID string, a netip.Addr) error {
	ctx, cancel := g.c.opContext(ctx)
	defer cancel()
	_, err := g.c.kv.Txn(ctx, nil, []Op{Delete(addrKey(poolID, a))})
	return storeErr(err)
}

// RequiresRequestReplay: the store keeps the allocations; a restart must not re-request.
func (g globalIPAM) RequiresRequestReplay() bool { return false }

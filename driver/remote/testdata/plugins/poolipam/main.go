// Command poolipam is a test IPAM plugin written with Docker's plugin SDK: it hands out
// addresses from its own pool (-pool when the request names none), the gateway
// (requests with RequestAddressType=com.docker.network.gateway) first in the pool,
// others from the tenth address on. With -requires-mac it declares the
// RequiresMACAddress capability, refuses endpoint address requests without a MAC and
// reports the MACs it got ("macs": "address mac").
package main

import (
	"flag"
	"fmt"
	"net/netip"
	"sort"
	"sync"

	"github.com/docker/go-plugins-helpers/ipam"

	"github.com/piernet/pier/driver/remote/testdata/plugins/internal/serve"
)

type pool struct {
	subnet netip.Prefix
	used   map[netip.Addr]bool
}

type allocator struct {
	f          *serve.Flags
	requireMAC bool
	macs       []string
	def4       netip.Prefix
	def6       netip.Prefix
	mu         sync.Mutex
	pools      map[string]*pool
}

func (a *allocator) GetCapabilities() (*ipam.CapabilitiesResponse, error) {
	return &ipam.CapabilitiesResponse{RequiresMACAddress: a.requireMAC}, a.f.Hit("IpamDriver.GetCapabilities")
}

func (a *allocator) GetDefaultAddressSpaces() (*ipam.AddressSpacesResponse, error) {
	return &ipam.AddressSpacesResponse{LocalDefaultAddressSpace: "piertest-local", GlobalDefaultAddressSpace: "piertest-global"},
		a.f.Hit("IpamDriver.GetDefaultAddressSpaces")
}

func (a *allocator) RequestPool(r *ipam.RequestPoolRequest) (*ipam.RequestPoolResponse, error) {
	if err := a.f.Hit("IpamDriver.RequestPool"); err != nil {
		return nil, err
	}
	if r.AddressSpace != "piertest-local" {
		return nil, fmt.Errorf("unknown address space %q", r.AddressSpace)
	}
	subnet := a.def4
	if r.V6 {
		subnet = a.def6
	}
	if r.Pool != "" {
		var err error
		if subnet, err = netip.ParsePrefix(r.Pool); err != nil {
			return nil, err
		}
	}
	id := "piertest/" + subnet.String()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pools[id] != nil {
		return nil, fmt.Errorf("pool %s is in use", subnet)
	}
	a.pools[id] = &pool{subnet: subnet, used: map[netip.Addr]bool{}}
	return &ipam.RequestPoolResponse{PoolID: id, Pool: subnet.String()}, nil
}

func (a *allocator) ReleasePool(r *ipam.ReleasePoolRequest) error {
	if err := a.f.Hit("IpamDriver.ReleasePool"); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pools[r.PoolID] == nil {
		return fmt.Errorf("no pool %s", r.PoolID)
	}
	delete(a.pools, r.PoolID)
	return nil
}

func (a *allocator) RequestAddress(r *ipam.RequestAddressRequest) (*ipam.RequestAddressResponse, error) {
	if err := a.f.Hit("IpamDriver.RequestAddress"); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pools[r.PoolID]
	if p == nil {
		return nil, fmt.Errorf("no pool %s", r.PoolID)
	}
	gateway := r.Options["RequestAddressType"] == "com.docker.network.gateway"
	mac := r.Options["com.docker.network.endpoint.macaddress"]
	if a.requireMAC && !gateway && mac == "" {
		return nil, fmt.Errorf("no MAC address in the request (options %v)", r.Options)
	}
	addr, err := p.pick(r.Address, gateway)
	if err != nil {
		return nil, err
	}
	p.used[addr] = true
	if mac != "" {
		a.macs = append(a.macs, addr.String()+" "+mac)
	}
	return &ipam.RequestAddressResponse{Address: netip.PrefixFrom(addr, p.subnet.Bits()).String()}, nil
}

func (p *pool) pick(want string, gateway bool) (netip.Addr, error) {
	if want != "" {
		a, err := netip.ParseAddr(want)
		if err != nil || !p.subnet.Contains(a) || p.used[a] {
			return netip.Addr{}, fmt.Errorf("address %s is not available", want)
		}
		return a, nil
	}
	a := p.subnet.Masked().Addr().Next()
	if !gateway {
		for range 9 {
			a = a.Next()
		}
	}
	for ; p.subnet.Contains(a); a = a.Next() {
		if !p.used[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("pool %s is full", p.subnet)
}

func (a *allocator) ReleaseAddress(r *ipam.ReleaseAddressRequest) error {
	if err := a.f.Hit("IpamDriver.ReleaseAddress"); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if p := a.pools[r.PoolID]; p != nil {
		delete(p.used, netip.MustParseAddr(r.Address))
	}
	return nil
}

// state lists "pool: addresses" for the tests.
func (a *allocator) state() any {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string][]string{}
	for id, p := range a.pools {
		out[id] = []string{}
		for ad := range p.used {
			out[id] = append(out[id], ad.String())
		}
		sort.Strings(out[id])
	}
	if a.requireMAC {
		out["macs"] = append([]string{}, a.macs...)
	}
	return out
}

func main() {
	requireMAC := flag.Bool("requires-mac", false, "declare RequiresMACAddress and insist on a MAC")
	f := serve.Parse()
	a := &allocator{f: f, requireMAC: *requireMAC, def4: netip.MustParsePrefix("198.51.100.0/24"),
		def6: netip.MustParsePrefix("2001:db8:100::/64"), pools: map[string]*pool{}}
	f.Run(ipam.NewHandler(a), a.state)
}

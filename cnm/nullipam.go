package cnm

import (
	"context"
	"net/netip"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/ipam"
)

// nullIPAM is the "null" IPAM driver: networks without addresses (none, host).
type nullIPAM struct{}

func (nullIPAM) RequestPool(ctx context.Context, req ipam.PoolRequest) (ipam.Pool, error) {
	return ipam.Pool{}, errdefs.InvalidArgument("the null IPAM driver hands out no pools")
}
func (nullIPAM) ReleasePool(ctx context.Context, id string) error { return nil }
func (nullIPAM) RequestAddress(ctx context.Context, req ipam.AddressRequest) (netip.Prefix, error) {
	return netip.Prefix{}, errdefs.InvalidArgument("the null IPAM driver hands out no addresses")
}
func (nullIPAM) ReleaseAddress(ctx context.Context, id string, a netip.Addr) error { return nil }

// Package ipam defines pier's IPAM contract and its default allocator.
//
// It owns address pools and address allocation as pure logic: no kernel access, no
// persistence, no goroutines. The controller rebuilds allocator state on restart by
// re-requesting the pools and addresses recorded with its networks and endpoints, so
// the records are the single source of truth (see docs/architecture.md).
package ipam

import (
	"context"
	"net"
	"net/netip"
)

// Address spaces of the default allocator.
const (
	SpaceLocal  = "LocalDefault"
	SpaceGlobal = "GlobalDefault"
)

// PoolRequest asks for a pool. A zero Subnet asks for an automatically chosen one.
type PoolRequest struct {
	AddressSpace string       // SpaceLocal or SpaceGlobal ("" = SpaceLocal)
	Subnet       netip.Prefix // user subnet; zero = choose from predefined pools
	IPRange      netip.Prefix // optional sub-pool dynamic addresses come from
	V6           bool         // family wanted when Subnet is zero
	Network      string       // network name, used in error messages only
	// Options are the user's --ipam-opt values, passed to plugin IPAM drivers; the
	// default allocator ignores them.
	Options map[string]string
}

// Pool is a granted pool.
type Pool struct {
	ID      string // opaque, stable for the same request
	Subnet  netip.Prefix
	IPRange netip.Prefix
	// AddressSpace is the allocator's name of the space the pool is in (a plugin's
	// own names for its local and global defaults).
	AddressSpace string
}

// AddressRequest asks for one address in a pool. A zero Addr asks for any free one.
type AddressRequest struct {
	PoolID string
	Addr   netip.Addr
	// Gateway marks the request as the pool's gateway: with a zero Addr the first
	// usable address of the subnet is used (even outside IPRange).
	Gateway bool
	// MAC is the endpoint's MAC, sent to allocators that declare they need it
	// (MACRequirer); nil otherwise.
	MAC net.HardwareAddr
}

// MACRequirer is implemented by allocators that need the endpoint's MAC with every
// address request (Docker's RequiresMACAddress IPAM capability).
type MACRequirer interface{ RequiresMACAddress() bool }

// Allocator is the IPAM contract the controller drives. Implementations: the default
// allocator in this package and the remote IPAM driver.
type Allocator interface {
	RequestPool(ctx context.Context, req PoolRequest) (Pool, error)
	ReleasePool(ctx context.Context, poolID string) error
	// RequestAddress returns the address with the pool's prefix length.
	RequestAddress(ctx context.Context, req AddressRequest) (netip.Prefix, error)
	ReleaseAddress(ctx context.Context, poolID string, addr netip.Addr) error
}

// Package null is the null driver (network "none"): a sandbox with loopback only. It
// creates nothing in the kernel.
package null

import (
	"context"

	"github.com/piernet/pier/driver"
)

// Name is the driver name.
const Name = "null"

// Driver is the null driver.
type Driver struct{}

// Name implements driver.Driver.
func (Driver) Name() string { return Name }

// Capability implements driver.Driver.
func (Driver) Capability() driver.Capability {
	return driver.Capability{DataScope: driver.ScopeLocal, ConnectivityScope: driver.ScopeLocal, NoInterface: true, Singleton: true}
}

// CreateNetwork implements driver.Driver: nothing to create (the controller allows
// only the predefined network, see Capability).
func (Driver) CreateNetwork(ctx context.Context, nc driver.NetworkConfig) error { return nil }

// DeleteNetwork implements driver.Driver.
func (Driver) DeleteNetwork(ctx context.Context, nid string) error { return nil }

// CreateEndpoint implements driver.Driver.
func (Driver) CreateEndpoint(ctx context.Context, ec driver.EndpointConfig) (driver.EndpointInfo, error) {
	return driver.EndpointInfo{}, nil
}

// DeleteEndpoint implements driver.Driver.
func (Driver) DeleteEndpoint(ctx context.Context, nid, eid string) error { return nil }

// Join implements driver.Driver: nothing to create.
func (Driver) Join(ctx context.Context, req driver.JoinRequest) (driver.JoinResult, error) {
	return driver.JoinResult{NoInterface: true, DisableGateway: true}, nil
}

// Leave implements driver.Driver.
func (Driver) Leave(ctx context.Context, nid, eid string) error { return nil }

// ProgramExternalConnectivity implements driver.Driver.
func (Driver) ProgramExternalConnectivity(ctx context.Context, nid, eid string) error { return nil }

// RevokeExternalConnectivity implements driver.Driver.
func (Driver) RevokeExternalConnectivity(ctx context.Context, nid, eid string) error { return nil }

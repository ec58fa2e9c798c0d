// Package host is the host driver (network "host"): the sandbox is the host's own
// network namespace and no interface is created.
package host

import (
	"context"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/null"
)

// Name is the driver name.
const Name = "host"

// Driver is the host driver. It embeds the null driver's no-op behaviour.
type Driver struct{ null.Driver }

// Name implements driver.Driver.
func (Driver) Name() string { return Name }

// CreateNetwork implements driver.Driver.
func (Driver) CreateNetwork(ctx context.Context, nc driver.NetworkConfig) error {
	return null.Singleton(nc, Name)
}

// UsesHostNamespace implements driver.HostNamespaced.
func (Driver) UsesHostNamespace() bool { return true }

// Package host is the host driver (network "host"): the sandbox is the host's own
// network namespace and no interface is created.
package host

import (
	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/null"
)

// Name is the driver name.
const Name = "host"

// Driver is the host driver. It embeds the null driver's no-op behaviour.
type Driver struct{ null.Driver }

// Name implements driver.Driver.
func (Driver) Name() string { return Name }

// Capability implements driver.Driver: the sandbox is the host's namespace.
func (Driver) Capability() driver.Capability {
	return driver.Capability{DataScope: driver.ScopeLocal, ConnectivityScope: driver.ScopeLocal,
		HostNamespace: true, NoInterface: true, Singleton: true}
}

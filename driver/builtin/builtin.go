// Package builtin registers pier's built-in drivers, in one ordered function.
package builtin

import (
	"log/slog"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/bridge"
	"github.com/piernet/pier/driver/host"
	"github.com/piernet/pier/driver/null"
	"github.com/piernet/pier/netns"
)

// Deps are what the built-in drivers need.
type Deps struct {
	Host     *netns.Namespace
	Firewall bridge.Firewall
	Logger   *slog.Logger
}

// Register adds the built-in drivers to r.
func Register(r *driver.Registry, deps Deps) error {
	for _, d := range []driver.Driver{
		null.Driver{},
		host.Driver{},
		bridge.New(deps.Host, deps.Firewall, deps.Logger),
	} {
		if err := r.Register(d); err != nil {
			return err
		}
	}
	return nil
}

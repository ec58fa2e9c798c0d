// Package builtin registers pier's built-in drivers, in one ordered function.
package builtin

import (
	"io"
	"log/slog"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/bridge"
	"github.com/piernet/pier/driver/host"
	"github.com/piernet/pier/driver/internal/subif"
	"github.com/piernet/pier/driver/ipvlan"
	"github.com/piernet/pier/driver/macvlan"
	"github.com/piernet/pier/driver/null"
	"github.com/piernet/pier/netns"
)

// Deps are what the built-in drivers need.
type Deps struct {
	Host     *netns.Namespace
	Firewall bridge.Firewall
	Publish  bridge.Publisher // port publishing for the bridge driver
	Logger   *slog.Logger
}

// Register adds the built-in drivers to r and starts their background work; the
// returned Closer stops it (call it after the controller is done).
func Register(r *driver.Registry, deps Deps) (io.Closer, error) {
	k := subif.HostKernel{Host: deps.Host}
	br := bridge.New(bridge.NewHostKernel(deps.Host), deps.Firewall, deps.Publish, deps.Logger)
	for _, d := range []driver.Driver{
		null.Driver{},
		host.Driver{},
		br,
		macvlan.New(k, deps.Logger),
		ipvlan.New(k, deps.Logger),
	} {
		if err := r.Register(d); err != nil {
			return nil, err
		}
	}
	br.Start()
	return br, nil
}

// Package remote is the remote network driver: it implements driver.Driver by calling a
// Docker network plugin (the NetworkDriver subsystem) through package plugin, with
// Docker's messages and rules (CreateEndpoint may only fill what was empty; Join names
// a host-side interface the controller moves into the sandbox). Every failed call
// returns an error the controller rolls back on; a call whose outcome is unknown (no
// reply in time, a dead plugin, a garbled reply) is also undone on the plugin with its
// inverse call, so the plugin is not left holding what pier forgot.
package remote

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/plugin"
)

const subsystem = plugin.NetworkDriver + "."

// Driver is a network driver served by a plugin.
type Driver struct {
	name string
	c    *plugin.Client
	capa driver.Capability
	log  *slog.Logger
}

// New returns the driver of an activated plugin, asking for its capabilities.
func New(ctx context.Context, p *plugin.Plugin, log *slog.Logger) (*Driver, error) {
	if !p.Implementing(plugin.NetworkDriver) {
		return nil, errdefs.NotFound("plugin %q is not a network driver", p.Name)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Driver{name: p.Name, c: p.Client, log: log.With("component", "remote-driver", "plugin", p.Name)}
	var res capabilitiesResponse
	if err := d.call(ctx, "GetCapabilities", nil, &res); err != nil {
		return nil, err
	}
	capa, err := capability(res)
	if err != nil {
		return nil, d.replyError("GetCapabilities", err)
	}
	d.capa = capa
	return d, nil
}

func capability(res capabilitiesResponse) (driver.Capability, error) {
	data, err := scope(res.Scope)
	if err != nil {
		return driver.Capability{}, err
	}
	conn := data
	if res.ConnectivityScope != "" {
		if conn, err = scope(res.ConnectivityScope); err != nil {
			return driver.Capability{}, err
		}
	}
	return driver.Capability{DataScope: data, ConnectivityScope: conn}, nil
}

func scope(s string) (driver.Scope, error) {
	switch driver.Scope(s) {
	case driver.ScopeLocal, driver.ScopeGlobal, driver.ScopeSwarm:
		return driver.Scope(s), nil
	}
	return "", errdefs.Internal("invalid scope %q (want local or global)", s)
}

// Name implements driver.Driver: the plugin's name.
func (d *Driver) Name() string { return d.name }

// Capability implements driver.Driver.
func (d *Driver) Capability() driver.Capability { return d.capa }

// call makes one call; a reply with Err set is the plugin's refusal.
func (d *Driver) call(ctx context.Context, method string, req any, resp plugin.Reply) error {
	return d.c.Do(ctx, subsystem+method, req, resp)
}

// undoOnDoubt runs undo (the inverse call) when err leaves it unknown whether the
// plugin acted, or when pier rejected a reply the plugin considered a success. It
// returns err, annotated if the undo failed too.
func (d *Driver) undoOnDoubt(ctx context.Context, err error, inverse string, undo func(context.Context) error) error {
	if err == nil || plugin.Refused(err) {
		return err
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.c.Timeout())
	defer cancel()
	if uerr := undo(uctx); uerr != nil {
		d.log.WarnContext(ctx, "undoing a failed call on the plugin", "call", inverse, "err", uerr)
		return fmt.Errorf("%w; undoing it with %s failed: %v", err, inverse, uerr)
	}
	return fmt.Errorf("%w; rolled back with %s", err, inverse)
}

// CreateNetwork implements driver.Driver.
func (d *Driver) CreateNetwork(ctx context.Context, nc driver.NetworkConfig) error {
	err := d.call(ctx, "CreateNetwork", createNetworkMessage(nc), &response{})
	return d.undoOnDoubt(ctx, err, "DeleteNetwork", func(ctx context.Context) error {
		return d.DeleteNetwork(ctx, nc.ID)
	})
}

func createNetworkMessage(nc driver.NetworkConfig) createNetworkRequest {
	generic := map[string]string{}
	for k, v := range nc.Options {
		generic[k] = v
	}
	opts := map[string]any{OptEnableIPv6: nc.EnableIPv6, OptGeneric: generic}
	if nc.Internal {
		opts[OptInternal] = true
	}
	return createNetworkRequest{NetworkID: nc.ID, Options: opts, IPv4Data: ipamMessages(nc.IPv4), IPv6Data: ipamMessages(nc.IPv6)}
}

func ipamMessages(pools []driver.IPAMData) []ipamData {
	var out []ipamData
	for _, p := range pools {
		m := ipamData{AddressSpace: p.AddressSpace}
		if p.Pool.IsValid() {
			m.Pool = p.Pool.String()
		}
		if p.Gateway.IsValid() {
			m.Gateway = p.Gateway.String()
		}
		for name, a := range p.Aux {
			if m.AuxAddresses == nil {
				m.AuxAddresses = map[string]string{}
			}
			m.AuxAddresses[name] = withBits(a, p.Pool.Bits())
		}
		out = append(out, m)
	}
	return out
}

// DeleteNetwork implements driver.Driver.
func (d *Driver) DeleteNetwork(ctx context.Context, nid string) error {
	return d.call(ctx, "DeleteNetwork", networkRequest{NetworkID: nid}, &response{})
}

// DeleteEndpoint implements driver.Driver.
func (d *Driver) DeleteEndpoint(ctx context.Context, nid, eid string) error {
	return d.call(ctx, "DeleteEndpoint", endpointRequest{NetworkID: nid, EndpointID: eid}, &response{})
}

// EndpointInfo returns the plugin's EndpointOperInfo value (shown by inspect).
func (d *Driver) EndpointInfo(ctx context.Context, nid, eid string) (map[string]any, error) {
	var res endpointInfoResponse
	if err := d.call(ctx, "EndpointOperInfo", endpointRequest{NetworkID: nid, EndpointID: eid}, &res); err != nil {
		return nil, err
	}
	return res.Value, nil
}

// Leave implements driver.Driver.
func (d *Driver) Leave(ctx context.Context, nid, eid string) error {
	return d.call(ctx, "Leave", endpointRequest{NetworkID: nid, EndpointID: eid}, &response{})
}

// ProgramExternalConnectivity implements driver.Driver; a plugin without it (404) is fine.
func (d *Driver) ProgramExternalConnectivity(ctx context.Context, nid, eid string) error {
	return tolerate404(d.call(ctx, "ProgramExternalConnectivity",
		extConnRequest{NetworkID: nid, EndpointID: eid, Options: map[string]any{}}, &response{}))
}

// RevokeExternalConnectivity implements driver.Driver; a plugin without it (404) is fine.
func (d *Driver) RevokeExternalConnectivity(ctx context.Context, nid, eid string) error {
	return tolerate404(d.call(ctx, "RevokeExternalConnectivity", endpointRequest{NetworkID: nid, EndpointID: eid}, &response{}))
}

func tolerate404(err error) error {
	if plugin.IsNotFound(err) {
		return nil
	}
	return err
}

// AllocateNetwork and FreeNetwork are the cluster manager's calls; a single-host
// controller never makes them. They are here so the protocol is complete.
func (d *Driver) AllocateNetwork(ctx context.Context, nc driver.NetworkConfig) (map[string]string, error) {
	var res allocateNetworkResponse
	err := d.call(ctx, "AllocateNetwork", allocateNetworkRequest{NetworkID: nc.ID, Options: nc.Options,
		IPv4Data: ipamMessages(nc.IPv4), IPv6Data: ipamMessages(nc.IPv6)}, &res)
	return res.Options, err
}

// FreeNetwork: see AllocateNetwork.
func (d *Driver) FreeNetwork(ctx context.Context, nid string) error {
	return d.call(ctx, "FreeNetwork", networkRequest{NetworkID: nid}, &response{})
}

// DiscoverNew tells a global-connectivity driver about a node (not used on one host).
func (d *Driver) DiscoverNew(ctx context.Context, n DiscoveryNotification) error {
	return d.call(ctx, "DiscoverNew", n, &response{})
}

// DiscoverDelete: see DiscoverNew.
func (d *Driver) DiscoverDelete(ctx context.Context, n DiscoveryNotification) error {
	return d.call(ctx, "DiscoverDelete", n, &response{})
}

package bridge

import (
	"context"
	"errors"
	"fmt"

	"github.com/piernet/pier/firewall"
	"github.com/piernet/pier/portmap"
)

// Publisher is what the bridge driver needs to publish ports: host port allocation
// and the loopback proxy (package portmap); the DNAT maps are in the Firewall.
type Publisher struct {
	Ports *portmap.Allocator
	Proxy *portmap.Proxy
}

// PublishedPorts implements driver.PortPublisher.
func (d *Driver) PublishedPorts(eid string) []portmap.Binding {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ep := d.endpoints[eid]; ep != nil {
		return append([]portmap.Binding(nil), ep.bindings...)
	}
	return nil
}

// ProgramExternalConnectivity publishes the sandbox's ports on this endpoint (it now
// provides the sandbox's default gateway): host ports, DNAT map elements, loopback
// proxy listeners. All or nothing.
func (d *Driver) ProgramExternalConnectivity(ctx context.Context, nid, eid string) error {
	n, err := d.network(nid)
	if err != nil {
		return err
	}
	ep, err := d.endpoint(eid)
	if err != nil {
		return err
	}
	specs, restored := d.portsOf(ep)
	if len(specs) == 0 || d.pub.Ports == nil {
		return nil
	}
	bindings, err := d.reservePorts(ctx, n, ep, specs, restored)
	if err != nil {
		return err
	}
	if err := d.programPorts(ctx, eid, bindings); err != nil {
		d.pub.Ports.Release(eid)
		return err
	}
	d.mu.Lock()
	ep.bindings = bindings
	d.mu.Unlock()
	return nil
}

func (d *Driver) portsOf(ep *endpoint) ([]portmap.Spec, []portmap.Binding) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return ep.ports, ep.restored
}

// reservePorts re-registers the bindings of a previous run when they still point at
// this endpoint (same host ports after a restart, ephemeral ones included), else
// allocates afresh.
func (d *Driver) reservePorts(ctx context.Context, n *network, ep *endpoint, specs []portmap.Spec, restored []portmap.Binding) ([]portmap.Binding, error) {
	if len(restored) > 0 && bindsTo(restored, ep) {
		if err := d.pub.Ports.Reserve(ep.id, restored); err == nil {
			return restored, nil
		}
	}
	return d.pub.Ports.Allocate(ctx, ep.id, specs, ep.addr4.Addr(), ep.addr6.Addr(), n.cfg.HostBindingIPv4)
}

func bindsTo(bs []portmap.Binding, ep *endpoint) bool {
	for _, b := range bs {
		if b.ContainerIP != ep.addr4.Addr() && b.ContainerIP != ep.addr6.Addr() {
			return false
		}
	}
	return true
}

func (d *Driver) programPorts(ctx context.Context, eid string, bindings []portmap.Binding) error {
	if err := d.fw.SetPorts(ctx, eid, toFirewall(bindings)); err != nil {
		return fmt.Errorf("publishing ports: %w", err)
	}
	if d.pub.Proxy == nil {
		return nil
	}
	if err := d.pub.Proxy.Set(ctx, eid, bindings); err != nil {
		return errors.Join(fmt.Errorf("publishing ports on loopback: %w", err), d.fw.RemovePorts(context.WithoutCancel(ctx), eid))
	}
	return nil
}

func toFirewall(bs []portmap.Binding) []firewall.PortBinding {
	out := make([]firewall.PortBinding, 0, len(bs))
	for _, b := range bs {
		if b.Proxied() {
			continue // no NAT between families: the proxy serves it
		}
		out = append(out, firewall.PortBinding{HostIP: b.HostIP, HostPort: b.HostPort, Proto: string(b.Proto),
			ContainerIP: b.ContainerIP, ContainerPort: b.ContainerPort})
	}
	return out
}

// RevokeExternalConnectivity unpublishes the endpoint's ports.
func (d *Driver) RevokeExternalConnectivity(ctx context.Context, nid, eid string) error {
	d.mu.Lock()
	ep := d.endpoints[eid]
	had := ep != nil && len(ep.bindings) > 0
	if ep != nil {
		ep.bindings, ep.restored = nil, nil
	}
	d.mu.Unlock()
	if !had || d.pub.Ports == nil {
		return nil
	}
	if d.pub.Proxy != nil {
		d.pub.Proxy.Remove(eid)
	}
	err := d.fw.RemovePorts(ctx, eid)
	d.pub.Ports.Release(eid)
	return err
}

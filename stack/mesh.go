package stack

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/ingress"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/portmap"
)

// mesh is the controller's routing mesh (cnm.Mesh) on package ingress: one Publisher
// in the host namespace, and a Return in each task namespace on the ingress network.
type mesh struct {
	host    *netns.Namespace
	proxy   *portmap.Proxy // loopback: the kernel does not DNAT 127.0.0.1 to another host
	pub     *ingress.Publisher
	untrack *ingress.Untrack
	log     *slog.Logger

	mu      sync.Mutex // guards the fields below
	forward bool       // ip_forward was turned on
	returns map[string]*taskReturn
}

type taskReturn struct {
	ns  *netns.Namespace
	r   *ingress.Return
	ifc string
}

func newMesh(ctx context.Context, host *netns.Namespace, proxy *portmap.Proxy, log *slog.Logger) (*mesh, error) {
	pub, err := ingress.New(ctx, ingress.Options{NetNS: host.Handle, Logger: log})
	if err != nil {
		return nil, err
	}
	return &mesh{host: host, proxy: proxy, pub: pub, untrack: ingress.NewUntrack(host.Handle), log: log, returns: map[string]*taskReturn{}}, nil
}

// overlayBridges is the name prefix of the overlay driver's bridges. With
// br_netfilter, a bridged frame passes the IPv4 hooks with the bridge as its input
// interface (br_netfilter swaps in the logical device), not the port it came in on.
var overlayBridges = []string{"ovbr"}

func (m *mesh) SetRouter(ctx context.Context, mac net.HardwareAddr) error {
	if mac == nil {
		return m.untrack.Set(ctx, nil, nil)
	}
	return m.untrack.Set(ctx, overlayBridges, []net.HardwareAddr{mac})
}

func (m *mesh) Publish(ctx context.Context, s cnm.MeshService) error {
	if err := m.ensureForwarding(); err != nil {
		return err
	}
	svc := ingress.Service{ID: s.ID, Backends: s.Backends, SNAT: s.SNAT}
	var loop []portmap.Binding
	for _, p := range s.Ports {
		svc.Ports = append(svc.Ports, ingress.Port{Proto: p.Proto, Published: p.Published, Target: p.Target})
		if len(s.Backends) > 0 {
			// From this node itself, 127.0.0.1:PORT goes through the loopback proxy, to
			// one task (the first; the kernel path balances every other connection).
			loop = append(loop, portmap.Binding{HostIP: netip.IPv4Unspecified(), HostPort: p.Published, Proto: portmap.Proto(p.Proto),
				ContainerIP: s.Backends[0], ContainerPort: p.Target})
		}
	}
	if err := m.pub.Set(ctx, svc); err != nil {
		return err
	}
	if m.proxy == nil {
		return nil
	}
	return m.proxy.Set(ctx, proxyOwner(s.ID), loop)
}

func proxyOwner(id string) string { return "mesh-" + id }

// ensureForwarding turns routing on in the host namespace (the bridge driver does
// the same for its networks).
func (m *mesh) ensureForwarding() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.forward {
		return nil
	}
	if err := m.host.SetSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	m.forward = true
	return nil
}

func (m *mesh) Unpublish(ctx context.Context, id string) error {
	if m.proxy != nil {
		m.proxy.Remove(proxyOwner(id))
	}
	return m.pub.Remove(ctx, id)
}

func (m *mesh) SetReturn(ctx context.Context, key, iface string, routers []cnm.MeshRouter) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	tr := m.returns[key]
	if tr != nil && tr.ifc != iface {
		m.dropLocked(key)
		tr = nil
	}
	if tr == nil {
		ns, err := netns.Open(key)
		if err != nil {
			return err
		}
		r, err := ingress.NewReturn(ctx, ingress.ReturnOptions{NetNS: ns.Handle, Iface: iface, Logger: m.log})
		if err != nil {
			ns.Close()
			return err
		}
		tr = &taskReturn{ns: ns, r: r, ifc: iface}
		m.returns[key] = tr
	}
	rs := make([]ingress.Router, 0, len(routers))
	for _, r := range routers {
		rs = append(rs, ingress.Router{MAC: r.MAC, Addr: r.Addr})
	}
	return tr.r.SetRouters(ctx, rs)
}

func (m *mesh) ForgetReturn(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropLocked(key)
}

func (m *mesh) dropLocked(key string) {
	if tr := m.returns[key]; tr != nil {
		_ = tr.r.Close() // the namespace may be gone already
		tr.ns.Close()
		delete(m.returns, key)
	}
}

// heal rewrites the published ports after another process changed nftables (run by
// the firewall's healer, which sees `nft flush ruleset`), and the return tables of
// the tasks... which live in the tasks' namespaces, out of reach of a flush on the
// host.
func (m *mesh) heal(ctx context.Context) {
	if ok, err := m.pub.Intact(ctx); ok && err == nil {
		return
	}
	if err := errors.Join(m.pub.Rewrite(ctx), m.untrack.Rewrite(ctx)); err != nil {
		m.log.ErrorContext(ctx, "restoring the routing mesh's table", "err", err)
		return
	}
	m.log.WarnContext(ctx, "the routing mesh's table was changed by another process; restored it")
}

// Close releases the mesh's handles and leaves its kernel state (the published ports,
// the tasks' return routes, the untracking): like the firewall's table, it keeps
// serving while pierd restarts, and the next Open rewrites it.
func (m *mesh) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for key, tr := range m.returns {
		tr.r.Detach()
		tr.ns.Close()
		delete(m.returns, key)
	}
	return m.pub.Detach()
}

package netns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Interface describes an interface to configure inside a sandbox.
type Interface struct {
	Name    string // name inside the sandbox
	SrcName string // host-side interface to move in and rename; "" = already inside
	// MAC, when set, is given to the interface if it has another one (a moved-in
	// interface gets the endpoint's MAC, as Docker does).
	MAC    net.HardwareAddr
	Addr4  netip.Prefix
	Addr6  netip.Prefix
	Routes []Route
	// LinkLocal are extra link-local addresses (Docker's LinkLocalIPs), 169.254.0.0/16
	// or fe80::/64 prefixes.
	LinkLocal []netip.Prefix
	// NoLinkLocal6 skips the IPv6 link-local address (for interfaces without IPv6): no
	// DAD, MLD or router solicitations flooded over the bridge at every join.
	NoLinkLocal6 bool
}

// Route is a static route inside a sandbox; a zero Via is a connected route.
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

// DefaultRoute selects the sandbox's default gateway. An empty IfName removes the
// default routes; a zero gateway of one family means no default route of that family.
type DefaultRoute struct {
	IfName string
	GW4    netip.Addr
	GW6    netip.Addr
}

// Manager creates sandbox namespaces pinned under Dir and configures them. It caches
// open namespaces; Close releases them. Safe for concurrent use.
type Manager struct {
	dir   string
	host  *Namespace
	procs Procs

	mu   sync.Mutex // guards open
	open map[string]*Namespace
}

// NewManager returns a manager pinning namespaces under dir; host is the namespace
// treated as the host (used for host-network sandboxes and moving interfaces).
func NewManager(dir string, host *Namespace) *Manager {
	return &Manager{dir: dir, host: host, open: map[string]*Namespace{}}
}

// HostKey is the sandbox key of the host namespace.
func (m *Manager) HostKey() string { return m.host.Path }

// KeyFor returns the pin path for sandbox id.
func (m *Manager) KeyFor(id string) string { return filepath.Join(m.dir, id) }

// Create makes and pins a new namespace for sandbox id, returning its key.
func (m *Manager) Create(ctx context.Context, id string) (string, error) {
	key := m.KeyFor(id)
	ns, err := Create(ctx, key)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	m.open[key] = ns
	m.mu.Unlock()
	return key, nil
}

// Exists reports whether the namespace with key is still pinned.
func (m *Manager) Exists(key string) bool { return key == m.HostKey() || IsPinned(key) }

// Destroy unpins the sandbox namespace with key (never the host's).
func (m *Manager) Destroy(ctx context.Context, key string) error {
	if key == m.HostKey() {
		return nil
	}
	m.mu.Lock()
	if ns := m.open[key]; ns != nil {
		ns.Close()
		delete(m.open, key)
	}
	m.mu.Unlock()
	return Remove(key)
}

// Processes returns how many processes run in the sandbox namespace with key (0 for
// the host's: its processes are not the sandbox's).
func (m *Manager) Processes(ctx context.Context, key string) (int, error) {
	if key == m.HostKey() {
		return 0, nil
	}
	pids, err := m.procs.In(key)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	return len(pids), err
}

// StopProcesses ends the processes in the sandbox namespace with key (SIGTERM, then
// SIGKILL after grace) and returns how many there were. The host's are never touched.
func (m *Manager) StopProcesses(ctx context.Context, key string, grace time.Duration) (int, error) {
	if key == m.HostKey() {
		return 0, nil
	}
	return m.procs.Stop(ctx, key, grace)
}

// Pinned lists the keys of all namespaces pinned under the manager's directory.
func (m *Manager) Pinned() ([]string, error) {
	entries, err := os.ReadDir(m.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", m.dir, err)
	}
	var keys []string
	for _, e := range entries {
		keys = append(keys, filepath.Join(m.dir, e.Name()))
	}
	sort.Strings(keys)
	return keys, nil
}

// Get returns the open namespace for key, opening it if needed.
func (m *Manager) Get(key string) (*Namespace, error) {
	if key == m.HostKey() {
		return m.host, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if ns := m.open[key]; ns != nil {
		return ns, nil
	}
	ns, err := Open(key)
	if err != nil {
		return nil, err
	}
	m.open[key] = ns
	return ns, nil
}

// Close releases cached handles; pinned namespaces stay.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, ns := range m.open {
		ns.Close()
		delete(m.open, k)
	}
	return nil
}

// ConfigureInterface moves (if SrcName is set) and configures ifc inside the sandbox.
func (m *Manager) ConfigureInterface(ctx context.Context, key string, ifc Interface) error {
	ns, err := m.Get(key)
	if err != nil {
		return err
	}
	if ifc.SrcName != "" {
		if err := m.moveIn(ns, ifc.SrcName, ifc.Name); err != nil {
			return err
		}
	}
	link, err := ns.NL.LinkByName(ifc.Name)
	if err != nil {
		return fmt.Errorf("finding %s in sandbox: %w", ifc.Name, err)
	}
	if ifc.MAC != nil && !bytes.Equal(link.Attrs().HardwareAddr, ifc.MAC) {
		if err := ns.NL.LinkSetHardwareAddr(link, ifc.MAC); err != nil {
			return fmt.Errorf("setting MAC %s on %s: %w", ifc.MAC, ifc.Name, err)
		}
	}
	if err := ns.addAddrs(link, ifc); err != nil {
		return err
	}
	if ifc.NoLinkLocal6 {
		if err := ns.NL.LinkSetIP6AddrGenMode(link, 1); err != nil { // IN6_ADDR_GEN_MODE_NONE
			return fmt.Errorf("turning off IPv6 link-local on %s: %w", ifc.Name, err)
		}
	}
	if err := ns.NL.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up: %w", ifc.Name, err)
	}
	for _, r := range ifc.Routes {
		if err := ns.NL.RouteReplace(toRoute(link, r.Dst, r.Via)); err != nil {
			return fmt.Errorf("adding route %s via %s: %w", r.Dst, r.Via, err)
		}
	}
	return nil
}

func (m *Manager) moveIn(ns *Namespace, src, dst string) error {
	l, err := m.host.NL.LinkByName(src)
	if err != nil {
		return fmt.Errorf("finding %s: %w", src, err)
	}
	if err := m.host.NL.LinkSetNsFd(l, int(ns.Handle)); err != nil {
		return fmt.Errorf("moving %s into sandbox: %w", src, err)
	}
	l, err = ns.NL.LinkByName(src)
	if err != nil {
		return fmt.Errorf("finding %s in sandbox: %w", src, err)
	}
	if err := ns.NL.LinkSetName(l, dst); err != nil {
		return fmt.Errorf("renaming %s to %s: %w", src, dst, err)
	}
	return nil
}

func (n *Namespace) addAddrs(link netlink.Link, ifc Interface) error {
	for _, p := range append([]netip.Prefix{ifc.Addr4, ifc.Addr6}, ifc.LinkLocal...) {
		if !p.IsValid() {
			continue
		}
		a := &netlink.Addr{IPNet: prefixToIPNet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := n.NL.AddrReplace(link, a); err != nil {
			return fmt.Errorf("adding address %s to %s: %w", p, ifc.Name, err)
		}
	}
	return nil
}

// findLink returns the sandbox at key and its interface name; a nil link (and nil
// error) when there is no such interface.
func (m *Manager) findLink(key, name string) (*Namespace, netlink.Link, error) {
	ns, err := m.Get(key)
	if err != nil {
		return nil, nil, err
	}
	l, err := ns.NL.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return ns, nil, nil
		}
		return nil, nil, fmt.Errorf("finding %s: %w", name, err)
	}
	return ns, l, nil
}

// RemoveInterface deletes the interface name from the sandbox; a missing one is fine.
func (m *Manager) RemoveInterface(ctx context.Context, key, name string) error {
	ns, l, err := m.findLink(key, name)
	if err != nil || l == nil {
		return err
	}
	if err := ns.NL.LinkDel(l); err != nil {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	return nil
}

// ReleaseInterface hands a moved-in interface back to the host namespace under its
// original name srcName, taken down (the kernel drops its addresses on the move), as
// Docker does at leave: the driver finds it where it made it, and can reuse it or
// delete it at DeleteEndpoint. When that is impossible (srcName is taken on the host
// meanwhile) the interface is deleted instead and the error says so. A missing
// interface is fine.
func (m *Manager) ReleaseInterface(ctx context.Context, key, name, srcName string) error {
	ns, l, err := m.findLink(key, name)
	if err != nil || l == nil {
		return err
	}
	if ns.Path == m.host.Path {
		return nil // a host-network sandbox: it is in the host namespace already
	}
	err = ns.NL.LinkSetDown(l)
	if err == nil && name != srcName {
		// Renamed inside the sandbox: on the host, the sandbox name (eth0) may be taken.
		err = ns.NL.LinkSetName(l, srcName)
	}
	if err == nil {
		err = ns.NL.LinkSetNsFd(l, int(m.host.Handle))
	}
	if err == nil {
		return nil
	}
	if derr := ns.NL.LinkDel(l); derr != nil {
		return fmt.Errorf("handing %s back to the host as %s: %w; deleting it: %w", name, srcName, err, derr)
	}
	return fmt.Errorf("handing %s back to the host as %s: %w (deleted it instead)", name, srcName, err)
}

// SetDefaultRoute replaces the sandbox's default routes according to r.
func (m *Manager) SetDefaultRoute(ctx context.Context, key string, r DefaultRoute) error {
	ns, err := m.Get(key)
	if err != nil {
		return err
	}
	for _, fam := range []struct {
		gw  netip.Addr
		dst netip.Prefix
	}{{r.GW4, netip.MustParsePrefix("0.0.0.0/0")}, {r.GW6, netip.MustParsePrefix("::/0")}} {
		if err := ns.replaceDefault(r.IfName, fam.dst, fam.gw); err != nil {
			return err
		}
	}
	return nil
}

func (n *Namespace) replaceDefault(ifname string, dst netip.Prefix, gw netip.Addr) error {
	if ifname == "" || !gw.IsValid() {
		return n.removeGatewayDefault(dst)
	}
	link, err := n.NL.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("finding %s: %w", ifname, err)
	}
	if err := n.NL.RouteReplace(toRoute(link, dst, gw)); err != nil {
		return fmt.Errorf("setting default route via %s dev %s: %w", gw, ifname, err)
	}
	return nil
}

// removeGatewayDefault removes default routes via a gateway; connected default routes
// a driver installed as static routes (ipvlan L3) stay.
func (n *Namespace) removeGatewayDefault(dst netip.Prefix) error {
	routes, err := Dump(func() ([]netlink.Route, error) {
		return n.NL.RouteListFiltered(family(dst.Addr()), &netlink.Route{Dst: prefixToIPNet(dst)}, netlink.RT_FILTER_DST)
	})
	if err != nil {
		return fmt.Errorf("listing default routes: %w", err)
	}
	for _, r := range routes {
		if r.Gw == nil {
			continue
		}
		if err := n.NL.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("removing default route %s via %s: %w", dst, r.Gw, err)
		}
	}
	return nil
}

func toRoute(link netlink.Link, dst netip.Prefix, via netip.Addr) *netlink.Route {
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixToIPNet(dst), Family: family(dst.Addr())}
	if via.IsValid() {
		r.Gw = via.AsSlice()
	} else {
		r.Scope = netlink.SCOPE_LINK
	}
	return r
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

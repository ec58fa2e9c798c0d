package wg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/netns"
)

// Mode is how the tunnel is implemented.
type Mode string

const (
	Auto      Mode = ""          // Kernel where the module exists, else Userspace
	Kernel    Mode = "kernel"    // the kernel's WireGuard, configured through wgctrl
	Userspace Mode = "userspace" // wireguard-go over a TUN device, in this process
)

// Defaults for Options.
const (
	DefaultName       = "pierwg0"
	DefaultListenPort = 51820
	DefaultMTU        = 1420
)

// Options configure a tunnel.
type Options struct {
	Name       string       // device name, default "pierwg0"
	TunnelNS   string       // path of the namespace the device lives in (required)
	SocketNS   string       // path of the namespace whose UDP socket carries the tunnel; "" = current
	ListenPort int          // default 51820
	PrivateKey Key          // required
	Address    netip.Prefix // the device's address
	MTU        int          // default 1420
	Mode       Mode         // "" = auto
	Logger     *slog.Logger
}

// Peer is another host's end of the tunnel.
type Peer struct {
	PublicKey  Key
	Endpoint   netip.AddrPort // its UDP socket's address
	AllowedIPs []netip.Prefix // routed to it through the device in the tunnel namespace
	Keepalive  time.Duration  // persistent keepalive, 0 = off; whole seconds
}

// PeerStatus is a peer as the device sees it.
type PeerStatus struct {
	Peer
	LastHandshake    time.Time // zero: never
	RxBytes, TxBytes int64
}

// backend is the seam between the tunnel's logic and a WireGuard implementation.
type backend interface {
	apply(c change) error
	status() ([]PeerStatus, error)
	close() error
}

// router routes prefixes through the device in the tunnel namespace (linkRouter;
// the tests' fake records them).
type router interface {
	routeAdd(p netip.Prefix) error
	routeDel(p netip.Prefix) error // a route already gone is not an error
}

// Tunnel is one host's WireGuard device. Its methods are safe for concurrent use.
type Tunnel struct {
	mode   Mode
	name   string
	log    *slog.Logger
	tunNS  *netns.Namespace
	be     backend
	sockNS *netns.Namespace
	rt     router // set once the device is up

	mu       sync.Mutex // guards the fields below
	priv     Key
	peers    map[Key]Peer
	routes   map[netip.Prefix]bool
	retiring map[Key]*time.Timer // replaced entries, removed after retireAfter
	done     bool
}

// retireAfter is how long a peer entry replaced by another (a peer's new key taking
// its AllowedIPs) stays on the device, holding no AllowedIPs: long enough for the
// packets already queued on it to be sent (removing an entry drops them). Nothing new
// is routed to it, and what it receives is dropped by WireGuard's source check.
const retireAfter = time.Second

func (o *Options) defaults() error {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.ListenPort == 0 {
		o.ListenPort = DefaultListenPort
	}
	if o.MTU == 0 {
		o.MTU = DefaultMTU
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.TunnelNS == "":
		return errdefs.InvalidArgument("wireguard tunnel needs a tunnel namespace")
	case o.PrivateKey.IsZero():
		return errdefs.InvalidArgument("wireguard tunnel needs a private key")
	case !o.Address.IsValid():
		return errdefs.InvalidArgument("wireguard tunnel needs an address")
	case o.ListenPort < 1 || o.ListenPort > 65535:
		return errdefs.InvalidArgument("wireguard listen port %d out of range", o.ListenPort)
	case o.MTU < 1280 || o.MTU > 65535:
		return errdefs.InvalidArgument("wireguard MTU %d out of range (1280-65535)", o.MTU)
	case o.Mode != Auto && o.Mode != Kernel && o.Mode != Userspace:
		return errdefs.InvalidArgument("unknown wireguard mode %q (want kernel or userspace)", o.Mode)
	}
	return nil
}

// Open creates the device in the tunnel namespace with its UDP socket in the socket
// namespace, gives it its address and key, and brings it up, with no peers. On failure
// nothing is left behind.
func Open(ctx context.Context, o Options) (*Tunnel, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	var u undo.Stack
	tunNS, sockNS, err := openNamespaces(o, &u)
	if err != nil {
		return nil, u.Rollback(err)
	}
	t := newTunnel(o.Name, o.Logger, o.PrivateKey)
	t.tunNS, t.sockNS = tunNS, sockNS
	if err := t.openBackend(ctx, o); err != nil {
		return nil, u.Rollback(err)
	}
	u.Push(t.be.close)
	if err := t.up(o); err != nil {
		return nil, u.Rollback(err)
	}
	u.Release()
	t.log.Info("wireguard tunnel up", "mode", t.mode, "address", o.Address, "port", o.ListenPort, "public_key", t.priv.Public())
	return t, nil
}

func newTunnel(name string, log *slog.Logger, priv Key) *Tunnel {
	return &Tunnel{name: name, log: log.With("component", "wg", "device", name), priv: priv,
		peers: map[Key]Peer{}, routes: map[netip.Prefix]bool{}, retiring: map[Key]*time.Timer{}}
}

// openNamespaces opens the tunnel namespace (with a netlink handle) and the socket
// namespace, and refuses them being the same: the device would then route to the
// underlay directly and a missing peer would no longer fail closed.
func openNamespaces(o Options, u *undo.Stack) (tunNS, sockNS *netns.Namespace, err error) {
	if tunNS, err = netns.Open(o.TunnelNS); err != nil {
		return nil, nil, errdefs.Wrap(errdefs.KindInvalidArgument, err)
	}
	u.Push(tunNS.Close)
	if o.SocketNS == "" {
		sockNS, err = netns.Current()
	} else {
		sockNS, err = netns.Open(o.SocketNS)
	}
	if err != nil {
		return nil, nil, errdefs.Wrap(errdefs.KindInvalidArgument, err)
	}
	u.Push(sockNS.Close)
	same, err := sameNamespace(tunNS, sockNS)
	if err != nil {
		return nil, nil, err
	}
	if same {
		return nil, nil, errdefs.InvalidArgument("wireguard tunnel namespace %s is the socket namespace: the device needs a namespace of its own", o.TunnelNS)
	}
	return tunNS, sockNS, nil
}

func sameNamespace(a, b *netns.Namespace) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Fstat(int(a.Handle), &sa); err != nil {
		return false, fmt.Errorf("stat of namespace %s: %w", a.Path, err)
	}
	if err := unix.Fstat(int(b.Handle), &sb); err != nil {
		return false, fmt.Errorf("stat of namespace %s: %w", b.Path, err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// openBackend creates the device in the mode asked for; Auto tries the kernel first
// and falls back to wireguard-go when the kernel has no WireGuard.
func (t *Tunnel) openBackend(ctx context.Context, o Options) error {
	if o.Mode == Auto || o.Mode == Kernel {
		be, err := openKernel(ctx, o, t.tunNS, t.sockNS)
		if err == nil {
			t.mode, t.be = Kernel, be
			return nil
		}
		if o.Mode == Kernel || !errors.Is(err, errNoKernelWireGuard) {
			return err
		}
		t.log.Info("kernel has no wireguard, using wireguard-go in userspace", "reason", err)
	}
	be, err := openUserspace(ctx, o, t.tunNS, t.sockNS, t.log)
	if err != nil {
		return err
	}
	t.mode, t.be = Userspace, be
	return nil
}

// up sets key and port, then the address, then brings the link up.
func (t *Tunnel) up(o Options) error {
	priv := o.PrivateKey
	if err := t.be.apply(change{privateKey: &priv, listenPort: o.ListenPort}); err != nil {
		return fmt.Errorf("configuring wireguard device %s: %w", t.name, err)
	}
	l, err := t.tunNS.NL.LinkByName(t.name)
	if err != nil {
		return fmt.Errorf("finding wireguard device %s: %w", t.name, err)
	}
	t.rt = linkRouter{nl: t.tunNS.NL, link: l.Attrs().Index}
	addr := &netlink.Addr{IPNet: ptr(prefixNet(o.Address))}
	if o.Address.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := t.tunNS.NL.AddrAdd(l, addr); err != nil {
		return fmt.Errorf("adding address %s to %s: %w", o.Address, t.name, err)
	}
	if err := t.tunNS.NL.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up: %w", t.name, err)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// Mode reports how the tunnel is implemented (never Auto).
func (t *Tunnel) Mode() Mode { return t.mode }

// PublicKey returns the public key of the tunnel's current private key.
func (t *Tunnel) PublicKey() Key {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.priv.Public()
}

// SetPeers replaces the peer set with peers. Only the difference is applied: a peer
// whose configuration is unchanged keeps its session. Routes for the peers'
// AllowedIPs follow, in the tunnel namespace through the device: added after the
// peers, removed before them.
func (t *Tunnel) SetPeers(ctx context.Context, peers []Peer) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return errdefs.Unavailable("wireguard tunnel %s is closed", t.name)
	}
	want, err := validatePeers(t.priv.Public(), peers)
	if err != nil {
		return err
	}
	wantRoutes := routesOf(want)
	add, del := diffRoutes(t.routes, wantRoutes)
	if err := t.routesLocked(del, false); err != nil {
		return err
	}
	c := diffPeers(t.peers, want)
	var replaced []Key
	c.remove, replaced = splitReplaced(c.remove, t.peers, want)
	if !c.empty() {
		if err := t.be.apply(c); err != nil {
			return fmt.Errorf("configuring wireguard peers on %s: %w", t.name, err)
		}
		t.log.Debug("wireguard peers changed", "removed", len(c.remove), "set", len(c.set), "retiring", len(replaced))
	}
	t.peers = want
	for _, k := range replaced {
		t.retireLocked(k)
	}
	return t.routesLocked(add, true)
}

// splitReplaced splits the peers to remove into those removed now and those whose
// AllowedIPs another wanted peer takes over (replaced: retired later).
func splitReplaced(remove []Key, cur, want map[Key]Peer) (now, replaced []Key) {
	taken := routesOf(want)
	for _, k := range remove {
		if slices.ContainsFunc(cur[k].AllowedIPs, func(p netip.Prefix) bool { return taken[p] }) {
			replaced = append(replaced, k)
		} else {
			now = append(now, k)
		}
	}
	return now, replaced
}

// retireLocked removes the replaced entry k after retireAfter, unless it is wanted
// again by then.
func (t *Tunnel) retireLocked(k Key) {
	if old, ok := t.retiring[k]; ok {
		old.Stop()
	}
	t.retiring[k] = time.AfterFunc(retireAfter, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		delete(t.retiring, k)
		if _, back := t.peers[k]; back || t.done {
			return
		}
		if err := t.be.apply(change{remove: []Key{k}}); err != nil {
			t.log.Warn("removing a replaced wireguard peer", "peer", k, "err", err)
		}
	})
}

// routesLocked adds (or deletes) the routes dst through the device, tracking them in
// t.routes as it goes, so that after a failure half way t.routes is still true.
func (t *Tunnel) routesLocked(dst []netip.Prefix, add bool) error {
	for _, p := range dst {
		if add {
			if err := t.rt.routeAdd(p); err != nil {
				return fmt.Errorf("routing %s through %s: %w", p, t.name, err)
			}
			t.routes[p] = true
			continue
		}
		if err := t.rt.routeDel(p); err != nil {
			return fmt.Errorf("removing route %s through %s: %w", p, t.name, err)
		}
		delete(t.routes, p)
	}
	return nil
}

// linkRouter routes through the device with a netlink handle in the tunnel namespace.
type linkRouter struct {
	nl   *netlink.Handle
	link int // the device's index
}

func (r linkRouter) route(p netip.Prefix) *netlink.Route {
	return &netlink.Route{LinkIndex: r.link, Dst: ptr(prefixNet(p)), Scope: netlink.SCOPE_LINK}
}

func (r linkRouter) routeAdd(p netip.Prefix) error { return r.nl.RouteReplace(r.route(p)) }

func (r linkRouter) routeDel(p netip.Prefix) error {
	if err := r.nl.RouteDel(r.route(p)); err != nil && !errors.Is(err, unix.ESRCH) { // ESRCH: gone with the device
		return err
	}
	return nil
}

// SetPrivateKey replaces the tunnel's private key (rotation on this side). Sessions
// with every peer end; each peer must know the new public key to handshake again (see
// the package doc for the order that loses least). Peers with a keepalive are sent
// one at once, so this side's one handshake under the new key is sent now — refused
// by peers that do not know the key yet, and not retried for 5 s — and cannot cross
// the handshake a peer starts when it learns the key.
func (t *Tunnel) SetPrivateKey(ctx context.Context, k Key) error {
	if k.IsZero() {
		return errdefs.InvalidArgument("wireguard private key is zero")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return errdefs.Unavailable("wireguard tunnel %s is closed", t.name)
	}
	if _, own := t.peers[k.Public()]; own {
		return errdefs.InvalidArgument("wireguard private key %s belongs to a peer", k.Public())
	}
	c := change{privateKey: &k}
	for _, p := range t.peers {
		if p.Keepalive > 0 {
			c.kick = append(c.kick, p)
		}
	}
	slices.SortFunc(c.kick, func(a, b Peer) int { return strings.Compare(a.PublicKey.String(), b.PublicKey.String()) })
	if err := t.be.apply(c); err != nil {
		return fmt.Errorf("setting private key of %s: %w", t.name, err)
	}
	t.priv = k
	t.log.Info("wireguard private key replaced", "public_key", k.Public())
	return nil
}

// Peers returns the peers as the device sees them, sorted by public key.
func (t *Tunnel) Peers(ctx context.Context) ([]PeerStatus, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return nil, errdefs.Unavailable("wireguard tunnel %s is closed", t.name)
	}
	s, err := t.be.status()
	if err != nil {
		return nil, fmt.Errorf("reading wireguard peers of %s: %w", t.name, err)
	}
	return s, nil
}

// Close removes the device, and with it its address and routes. It is idempotent.
func (t *Tunnel) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return nil
	}
	t.done = true
	for _, tm := range t.retiring {
		tm.Stop()
	}
	err := t.be.close()
	t.routes = map[netip.Prefix]bool{}
	return errors.Join(err, t.tunNS.Close(), t.sockNS.Close())
}

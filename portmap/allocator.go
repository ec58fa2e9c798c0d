package portmap

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/piernet/pier/errdefs"
)

// Allocator reserves host ports for owners (sandboxes or endpoints). A
// reservation is keyed by protocol, address family, host port and host
// address; an unspecified address (0.0.0.0 or ::) conflicts with every
// address of its family. Before a port is granted it is also probed in the
// host namespace, so ports bound by other processes are refused too.
//
// The Allocator keeps its state in memory only: after a restart the caller
// re-registers recorded bindings with Reserve.
type Allocator struct {
	host Host
	log  *slog.Logger

	// mu guards the fields below. It is held across Allocate's probes (a
	// few bind(2) calls in one namespace switch) so that two Allocates
	// cannot both see a port as free.
	mu     sync.Mutex
	owners map[string][]Binding
	used   map[slot]map[netip.Addr]string // host address -> owner
	cursor map[Proto]uint16               // next ephemeral port to try
}

// slot is a host port of one protocol and address family.
type slot struct {
	proto Proto
	v6    bool
	port  uint16
}

// NewAllocator returns an Allocator probing ports in host.
func NewAllocator(host Host, log *slog.Logger) *Allocator {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Allocator{
		host:   host,
		log:    log.With("component", "portmap"),
		owners: map[string][]Binding{},
		used:   map[slot]map[netip.Addr]string{},
		cursor: map[Proto]uint16{},
	}
}

// Allocate reserves host ports for specs, publishing to containerIP4 and/or
// containerIP6 (an invalid address: the container has no address of that
// family). A spec without host IP is published on defaultHostIP4 if that is
// a specific IPv4 address, else on 0.0.0.0 and, if the container has IPv6,
// on :: too. It is all-or-nothing: on error nothing stays reserved. A taken
// port fails with Docker's words, "Bind for 0.0.0.0:8080 failed: port is
// already allocated" (a Conflict). Calling it again for an owner adds to
// the owner's bindings.
func (a *Allocator) Allocate(ctx context.Context, owner string, specs []Spec, containerIP4, containerIP6, defaultHostIP4 netip.Addr) ([]Binding, error) {
	if owner == "" {
		return nil, errdefs.InvalidArgument("allocating host ports: no owner")
	}
	reqs, err := requests(specs, targets{containerIP4, containerIP6, defaultHostIP4})
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Binding
	err = a.host.Probe(ctx, func(p Prober) error {
		pl := &planner{a: a, p: p, taken: map[slot]map[netip.Addr]bool{}}
		for _, r := range reqs {
			if err := ctx.Err(); err != nil {
				return err
			}
			bs, err := pl.place(r)
			if err != nil {
				return err
			}
			out = append(out, bs...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	a.commitLocked(owner, out)
	return out, nil
}

// Reserve registers bindings granted earlier (recorded before a restart)
// without probing: pier's own rules still serve them. All-or-nothing.
func (a *Allocator) Reserve(owner string, bindings []Binding) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := map[slot]map[netip.Addr]bool{}
	for _, b := range bindings {
		if !b.HostIP.IsValid() || b.HostPort == 0 || b.Proto.Number() == 0 {
			return errdefs.InvalidArgument("invalid binding %s", b)
		}
		s := slot{b.Proto, b.HostIP.Is6(), b.HostPort}
		if conflicts(a.used[s], b.HostIP) || conflicts(seen[s], b.HostIP) {
			return errAllocated(b.HostIP, b.HostPort)
		}
		addTo(seen, s, b.HostIP)
	}
	a.commitLocked(owner, bindings)
	return nil
}

// Release frees every port of owner and returns its bindings.
func (a *Allocator) Release(owner string) []Binding {
	a.mu.Lock()
	defer a.mu.Unlock()
	bs := a.owners[owner]
	delete(a.owners, owner)
	for _, b := range bs {
		s := slot{b.Proto, b.HostIP.Is6(), b.HostPort}
		delete(a.used[s], b.HostIP)
		if len(a.used[s]) == 0 {
			delete(a.used, s)
		}
	}
	return bs
}

// Bindings returns owner's bindings.
func (a *Allocator) Bindings(owner string) []Binding {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.owners[owner])
}

func (a *Allocator) commitLocked(owner string, bs []Binding) {
	for _, b := range bs {
		s := slot{b.Proto, b.HostIP.Is6(), b.HostPort}
		if a.used[s] == nil {
			a.used[s] = map[netip.Addr]string{}
		}
		a.used[s][b.HostIP] = owner
	}
	a.owners[owner] = append(a.owners[owner], bs...)
}

// conflicts reports whether host address ip collides with the addresses in
// held (one slot's holders): the same address, or an unspecified address on
// either side.
func conflicts[V any](held map[netip.Addr]V, ip netip.Addr) bool {
	if len(held) == 0 {
		return false
	}
	if ip.IsUnspecified() {
		return true
	}
	_, same := held[ip]
	_, wild := held[netip.IPv6Unspecified()]
	if ip.Is4() {
		_, wild = held[netip.IPv4Unspecified()]
	}
	return same || wild
}

func addTo(m map[slot]map[netip.Addr]bool, s slot, ip netip.Addr) {
	if m[s] == nil {
		m[s] = map[netip.Addr]bool{}
	}
	m[s][ip] = true
}

// errAllocated is Docker's error for a taken host port.
func errAllocated(ip netip.Addr, port uint16) error {
	return errdefs.Conflict("Bind for %s failed: port is already allocated", netip.AddrPortFrom(ip, port))
}

// targets are the container's addresses and the network's default host IP.
type targets struct {
	ip4, ip6, defaultHost4 netip.Addr
}

// request is one container port to publish on one or more host addresses
// with the same host port.
type request struct {
	proto       Proto
	hosts       []netip.Addr // host addresses, each with its container address
	containers  []netip.Addr
	first, last uint16 // host port candidates; 0, 0 = ephemeral
	ctrPort     uint16
}

// requests validates specs and turns them into one request per container port.
func requests(specs []Spec, t targets) ([]request, error) {
	if err := t.validate(); err != nil {
		return nil, err
	}
	var out []request
	for _, sp := range specs {
		if err := validSpec(sp); err != nil {
			return nil, err
		}
		hosts, ctrs, err := t.addresses(sp)
		if err != nil {
			return nil, err
		}
		for _, one := range sp.expand() {
			out = append(out, request{proto: one.Proto, hosts: hosts, containers: ctrs,
				first: one.HostPort, last: one.HostPortEnd, ctrPort: one.ContainerPort})
		}
	}
	return out, nil
}

func (t targets) validate() error {
	if t.ip4.IsValid() && !t.ip4.Is4() || t.ip6.IsValid() && (!t.ip6.Is6() || t.ip6.Is4In6()) {
		return errdefs.InvalidArgument("invalid container addresses %s, %s", t.ip4, t.ip6)
	}
	if !t.ip4.IsValid() && !t.ip6.IsValid() {
		return errdefs.InvalidArgument("cannot publish ports: the container has no IP address")
	}
	if t.defaultHost4.IsValid() && !t.defaultHost4.Is4() {
		return errdefs.InvalidArgument("default host binding address %s is not an IPv4 address", t.defaultHost4)
	}
	return nil
}

func validSpec(sp Spec) error {
	n := sp.normalized()
	if sp.Proto.Number() == 0 || n.ContainerPort == 0 || n.ContainerPortEnd < n.ContainerPort ||
		n.HostPortEnd < n.HostPort || (n.HostPort == 0 && n.HostPortEnd != 0) || n.HostIP.Zone() != "" {
		return errdefs.InvalidArgument("invalid port spec %q", sp)
	}
	if err := n.checkRanges(); err != nil {
		return errdefs.InvalidArgument("invalid port spec %q: %v", sp, err)
	}
	return nil
}

// addresses returns the host addresses sp is published on and the matching
// container addresses.
func (t targets) addresses(sp Spec) (hosts, ctrs []netip.Addr, err error) {
	ip := sp.HostIP.Unmap()
	if !ip.IsValid() && t.defaultHost4.IsValid() && !t.defaultHost4.IsUnspecified() {
		ip = t.defaultHost4
	}
	if ip.IsValid() {
		ctr := t.target(ip.Is6())
		if !ctr.IsValid() {
			return nil, nil, errdefs.InvalidArgument("cannot publish %q on host address %s: the container has no address", sp, ip)
		}
		return []netip.Addr{ip}, []netip.Addr{ctr}, nil
	}
	// No host address: both families, as Docker. A container without an address of
	// one family is reached over the other one through the proxy (Binding.Proxied).
	if !t.ip4.IsValid() && !t.ip6.IsValid() {
		return nil, nil, nil
	}
	return []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}, []netip.Addr{t.target(false), t.target(true)}, nil
}

// target is the container address a host address of the given family maps to: the
// same family if the container has it, else the other one.
func (t targets) target(v6 bool) netip.Addr {
	same, other := t.ip4, t.ip6
	if v6 {
		same, other = t.ip6, t.ip4
	}
	if same.IsValid() {
		return same
	}
	return other
}

func family(ip netip.Addr) string {
	if ip.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// planner places the requests of one Allocate call. taken holds what this
// call placed so far, so that its own requests conflict with each other.
type planner struct {
	a     *Allocator
	p     Prober
	taken map[slot]map[netip.Addr]bool
}

// place picks a host port for r and returns its bindings.
func (pl *planner) place(r request) ([]Binding, error) {
	if r.first != 0 {
		return pl.placeIn(r)
	}
	return pl.placeEphemeral(r)
}

// placeIn takes the first free port of r's host range (often one port).
func (pl *planner) placeIn(r request) ([]Binding, error) {
	blocked := r.hosts[0]
	for port := int(r.first); port <= int(r.last); port++ {
		by, err := pl.try(r, uint16(port))
		if err != nil {
			return nil, err
		}
		if !by.IsValid() {
			return pl.bindings(r, uint16(port)), nil
		}
		blocked = by
	}
	if r.first == r.last {
		return nil, errAllocated(blocked, r.first)
	}
	return nil, errdefs.Conflict("Bind for %s failed: every port of the range %d-%d is already allocated",
		netip.AddrPortFrom(r.hosts[0], r.first), r.first, r.last)
}

// placeEphemeral takes a free port of the local port range, going on from
// where the last ephemeral allocation of the protocol stopped (as Docker
// does), so that a just released port is not handed out again at once.
func (pl *planner) placeEphemeral(r request) ([]Binding, error) {
	first, last, err := pl.p.PortRange()
	if err != nil {
		return nil, errdefs.Internal("choosing an ephemeral host port: %w", err)
	}
	n := int(last) - int(first) + 1
	start := int(pl.a.cursor[r.proto])
	if start < int(first) || start > int(last) {
		start = int(first)
	}
	for i := range n {
		port := uint16(int(first) + (start-int(first)+i)%n)
		by, err := pl.try(r, port)
		if err != nil {
			return nil, err
		}
		if !by.IsValid() {
			pl.a.cursor[r.proto] = port + 1
			return pl.bindings(r, port), nil
		}
	}
	return nil, errdefs.Unavailable("no free %s host port in the ephemeral range %d-%d", r.proto, first, last)
}

// try takes port on every host address of r if it is free on all of
// them, else it returns the host address where it is taken. A port held
// by another process counts as taken.
func (pl *planner) try(r request, port uint16) (blocked netip.Addr, err error) {
	for _, h := range r.hosts {
		s := slot{r.proto, h.Is6(), port}
		if conflicts(pl.a.used[s], h) || conflicts(pl.taken[s], h) {
			return h, nil
		}
	}
	if blocked, err = pl.probe(r, port); blocked.IsValid() || err != nil {
		return blocked, err
	}
	for _, h := range r.hosts {
		addTo(pl.taken, slot{r.proto, h.Is6(), port}, h)
	}
	return netip.Addr{}, nil
}

// probe binds port on r's host addresses in the host namespace and
// returns the address where another socket holds it. For 0.0.0.0 plus ::
// one dual-stack probe covers both (and a conflict is reported on
// 0.0.0.0, as Docker does).
func (pl *planner) probe(r request, port uint16) (netip.Addr, error) {
	if bothWildcards(r.hosts) {
		return classify(pl.p.BindAll(r.proto, port), r.hosts[0], port, r.proto)
	}
	for _, h := range r.hosts {
		if blocked, err := classify(pl.p.Bind(r.proto, netip.AddrPortFrom(h, port)), h, port, r.proto); blocked.IsValid() || err != nil {
			return blocked, err
		}
	}
	return netip.Addr{}, nil
}

// classify turns the result of probing h into the address where the port
// is taken (invalid: free) or an error of the right kind.
func classify(err error, h netip.Addr, port uint16, proto Proto) (netip.Addr, error) {
	switch {
	case err == nil:
		return netip.Addr{}, nil
	case errors.Is(err, unix.EADDRINUSE):
		return h, nil
	case errors.Is(err, unix.EADDRNOTAVAIL):
		return h, errdefs.InvalidArgument("cannot publish on %s: it is not an address of this host", h)
	case errors.Is(err, unix.EAFNOSUPPORT):
		return h, errdefs.Unavailable("cannot publish on %s: %s is disabled on this host", h, family(h))
	}
	return h, errdefs.Internal("probing host port %s/%s: %w", netip.AddrPortFrom(h, port), proto, err)
}

// bothWildcards reports whether hosts are 0.0.0.0 and ::, as requests
// without a host address are.
func bothWildcards(hosts []netip.Addr) bool {
	return len(hosts) == 2 && hosts[0] == netip.IPv4Unspecified() && hosts[1] == netip.IPv6Unspecified()
}

func (pl *planner) bindings(r request, port uint16) []Binding {
	out := make([]Binding, len(r.hosts))
	for i, h := range r.hosts {
		out[i] = Binding{HostIP: h, HostPort: port, Proto: r.proto, ContainerIP: r.containers[i], ContainerPort: r.ctrPort}
	}
	return out
}

package ingress

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"

	vns "github.com/vishvananda/netns"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/lb"
)

// Port is one published port: connections to Published on a host address are
// forwarded to Target on a backend.
type Port struct {
	Proto     string // "tcp" or "udp"
	Published uint16
	Target    uint16
}

func (p Port) String() string { return fmt.Sprintf("%d:%d/%s", p.Published, p.Target, p.Proto) }

// key is what a port is dispatched by (and conflicts on).
func (p Port) key() portKey { return portKey{p.Proto, p.Published} }

type portKey struct {
	proto string
	port  uint16
}

func (k portKey) String() string { return fmt.Sprintf("%d/%s", k.port, k.proto) }

// Service is one published service: its ports and the ingress-network addresses of
// the backends its connections are spread over.
type Service struct {
	// ID identifies the service: letters, digits and '_' only, at most 64
	// characters, unique in the Publisher.
	ID       string
	Ports    []Port
	Backends []netip.Addr // IPv4 addresses on the ingress network
	// SNAT masquerades the forwarded connections behind the host's ingress address
	// (Docker's behaviour): the backend sees the host, not the client, and replies
	// need no Return in the task.
	SNAT bool
}

// normalize validates s and returns it with sorted, unique ports and backends.
func normalize(s Service) (Service, error) {
	if s.ID == "" || len(s.ID) > 64 || strings.IndexFunc(s.ID, badIDRune) >= 0 {
		return s, errdefs.InvalidArgument("invalid service ID %q: letters, digits and '_' only, at most 64", s.ID)
	}
	bs := make([]netip.Addr, 0, len(s.Backends))
	for _, b := range s.Backends {
		if b = b.Unmap(); !b.Is4() || b.IsUnspecified() {
			return s, errdefs.InvalidArgument("service %s: backend %v is not an IPv4 address", s.ID, b)
		}
		bs = append(bs, b)
	}
	slices.SortFunc(bs, netip.Addr.Compare)
	s.Backends = slices.Compact(bs)
	ps := slices.Clone(s.Ports)
	for _, p := range ps {
		if (p.Proto != "tcp" && p.Proto != "udp") || p.Published == 0 || p.Target == 0 {
			return s, errdefs.InvalidArgument("service %s: invalid port %v", s.ID, p)
		}
	}
	slices.SortFunc(ps, func(a, b Port) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Published, b.Published), cmp.Compare(a.Target, b.Target))
	})
	ps = slices.Compact(ps)
	for i := 1; i < len(ps); i++ {
		if ps[i].key() == ps[i-1].key() {
			return s, errdefs.InvalidArgument("service %s: port %v is published twice (to %d and %d)", s.ID, ps[i].key(), ps[i-1].Target, ps[i].Target)
		}
	}
	s.Ports = ps
	return s, nil
}

func badIDRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_')
}

func (s Service) equal(o Service) bool {
	return s.SNAT == o.SNAT && slices.Equal(s.Ports, o.Ports) && slices.Equal(s.Backends, o.Backends)
}

func (s Service) publishesUDP() bool {
	return slices.ContainsFunc(s.Ports, func(p Port) bool { return p.Proto == "udp" })
}

// Options configure a Publisher.
type Options struct {
	// NetNS is the host namespace to program (0: the current one); it must stay open
	// until Close.
	NetNS  vns.NsHandle
	Logger *slog.Logger
}

// ErrClosed is returned by methods called after Close.
var ErrClosed = errors.New("ingress publisher is closed")

// Publisher keeps the published services of one host and programs them into the
// table "ip pier_ingress". It is safe for concurrent use.
type Publisher struct {
	log *slog.Logger
	k   kernel

	mu     sync.Mutex // guards the fields below; held across kernel batches
	svcs   map[string]*published
	ports  map[portKey]string // published port → service ID
	next   uint32             // the next service number
	c      conn               // nil until first use and after a failed batch
	synced bool               // the kernel holds exactly the rendering of svcs
	closed bool
}

// published is a service as programmed: its number (the first half of its slot keys)
// and its slot table.
type published struct {
	Service
	num   uint32
	slots []netip.Addr // lb.Slots backends, nil without backends
}

// kernel is the Publisher's seam: a lasting nftables connection and the conntrack
// table. Both are called with Publisher.mu held.
type kernel struct {
	dial      func() (conn, error)
	deleteUDP func(backends []netip.Addr) (uint, error)
	close     func()
}

// New returns a Publisher for o.NetNS and writes its (empty) table.
func New(ctx context.Context, o Options) (*Publisher, error) {
	return start(ctx, kernelAt(o.NetNS), o.Logger)
}

func kernelAt(ns vns.NsHandle) kernel {
	ct := &lb.Conntrack{NS: ns}
	return kernel{
		dial:      func() (conn, error) { return dialAt(ns) },
		deleteUDP: func(bs []netip.Addr) (uint, error) { return ct.DeleteUDP(netip.Addr{}, bs) },
		close:     ct.Close,
	}
}

func start(ctx context.Context, k kernel, log *slog.Logger) (*Publisher, error) {
	p := newPublisher(k, log)
	if err := p.Rewrite(ctx); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

func newPublisher(k kernel, log *slog.Logger) *Publisher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Publisher{log: log.With("component", "ingress"), k: k, svcs: map[string]*published{}, ports: map[portKey]string{}, next: 1}
}

// Set adds service s or replaces the service with its ID, in one batch that touches
// only what changed: a backend change rewrites the ~64/N slot elements that change
// hands, a port or SNAT change its port elements, never a rule. Setting the same state
// again sends nothing. A port another service publishes is a Conflict.
func (p *Publisher) Set(ctx context.Context, s Service) error {
	s, err := normalize(s)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	for _, port := range s.Ports {
		if id, taken := p.ports[port.key()]; taken && id != s.ID {
			return errdefs.Conflict("service %s: port %v is already published by service %s", s.ID, port.key(), id)
		}
	}
	old := p.svcs[s.ID]
	if old != nil && old.equal(s) && p.synced {
		return nil
	}
	want := &published{Service: s, num: p.next}
	if old != nil {
		want.num = old.num
		want.slots = lb.Assign(old.slots, s.Backends)
	} else {
		want.slots = lb.Assign(nil, s.Backends)
	}
	if err := p.applyLocked(ctx, s.ID, want); err != nil {
		return fmt.Errorf("publishing service %s: %w", s.ID, err)
	}
	if old == nil {
		p.next++
	} else {
		p.flushRemoved(old.Service, s)
	}
	return nil
}

// Remove stops publishing service id, in one batch. Removing an unknown service is a
// no-op.
func (p *Publisher) Remove(ctx context.Context, id string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	old, had := p.svcs[id]
	if !had {
		return nil
	}
	if err := p.applyLocked(ctx, id, nil); err != nil {
		return fmt.Errorf("unpublishing service %s: %w", id, err)
	}
	p.flushRemoved(old.Service, Service{})
	return nil
}

// Services returns the published services, sorted by ID.
func (p *Publisher) Services() []Service {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Service, 0, len(p.svcs))
	for _, s := range p.svcs {
		c := s.Service
		c.Ports, c.Backends = slices.Clone(c.Ports), slices.Clone(c.Backends)
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Service) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Intact reports whether the kernel table is still as programmed: its chains, the
// rules of its base chains and the element counts of its maps. After `nft flush
// ruleset` (or any edit of the table) it is false; Rewrite heals it.
func (p *Publisher) Intact(ctx context.Context) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false, ErrClosed
	}
	if !p.synced {
		return false, nil
	}
	c, err := p.connLocked()
	if err != nil {
		return false, err
	}
	ok, err := intact(c, p.svcs)
	if err != nil {
		p.dropConnLocked()
	}
	return ok, err
}

// Rewrite deletes and re-creates the whole table in one atomic batch (conntrack
// state is kept: established connections survive).
func (p *Publisher) Rewrite(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	p.synced = false
	if err := p.applyLocked(ctx, "", nil); err != nil {
		return fmt.Errorf("rewriting table %s: %w", TableName, err)
	}
	return nil
}

// Close deletes the table and releases the connections. It is idempotent.
func (p *Publisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.k.close != nil {
		p.k.close()
	}
	c, err := p.connLocked()
	if err == nil {
		queueDelete(c)
		err = c.Flush()
	}
	if err != nil {
		err = fmt.Errorf("deleting table %s: %w", TableName, err)
	}
	return errors.Join(err, p.dropConnLocked())
}

// applyLocked changes service id to want (nil: removed; id "": no change) in one
// batch: an incremental one when the kernel is in sync, else a rewrite of the whole
// table. On error the desired state is unchanged.
func (p *Publisher) applyLocked(ctx context.Context, id string, want *published) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := p.connLocked()
	if err != nil {
		return err
	}
	old := p.svcs[id]
	if p.synced {
		queueChange(c, old, want)
	}
	p.setLocked(id, old, want)
	if !p.synced {
		queueRewrite(c, p.svcs)
	}
	if err := c.Flush(); err != nil {
		p.dropConnLocked()
		p.setLocked(id, want, old)
		return err
	}
	p.synced = true
	return nil
}

// setLocked replaces old by now (either may be nil) in the desired state.
func (p *Publisher) setLocked(id string, old, now *published) {
	if id == "" {
		return
	}
	if old != nil {
		for _, port := range old.Ports {
			delete(p.ports, port.key())
		}
		delete(p.svcs, id)
	}
	if now != nil {
		for _, port := range now.Ports {
			p.ports[port.key()] = id
		}
		p.svcs[id] = now
	}
}

func (p *Publisher) connLocked() (conn, error) {
	if p.c != nil {
		return p.c, nil
	}
	c, err := p.k.dial()
	if err != nil {
		return nil, fmt.Errorf("opening nftables connection: %w", err)
	}
	p.c = c
	return c, nil
}

// dropConnLocked closes the connection after a failed batch (its queue may hold half
// a batch) and marks the kernel out of sync.
func (p *Publisher) dropConnLocked() error {
	p.synced = false
	if p.c == nil {
		return nil
	}
	err := p.c.CloseLasting()
	p.c = nil
	return err
}

// backendLocked reports whether a service publishing UDP has backend b.
func (p *Publisher) backendLocked(b netip.Addr) bool {
	for _, s := range p.svcs {
		if s.publishesUDP() && slices.Contains(s.Backends, b) {
			return true
		}
	}
	return false
}

// flushRemoved deletes the UDP conntrack entries of DNATed flows to backends old had
// and now does not (unless another service still has them). Errors are logged: the batch has landed and the flows time out by
// themselves.
func (p *Publisher) flushRemoved(old, now Service) {
	if !old.publishesUDP() || p.k.deleteUDP == nil {
		return
	}
	var gone []netip.Addr
	for _, b := range old.Backends {
		if !slices.Contains(now.Backends, b) && !p.backendLocked(b) {
			gone = append(gone, b)
		}
	}
	if len(gone) == 0 {
		return
	}
	n, err := p.k.deleteUDP(gone)
	if err != nil {
		p.log.Warn("deleting UDP flows to removed backends", "service", old.ID, "err", err)
		return
	}
	if n > 0 {
		p.log.Debug("deleted UDP flows to removed backends", "service", old.ID, "flows", n)
	}
}

// Detach releases the Publisher's sockets and leaves its table in the kernel: a
// restarting pierd keeps publishing meanwhile, and its next Publisher rewrites the
// table from the services it is given.
func (p *Publisher) Detach() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.k.close != nil {
		p.k.close()
	}
	return p.dropConnLocked()
}

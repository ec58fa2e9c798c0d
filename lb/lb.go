package lb

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
	"time"

	"github.com/vishvananda/netns"
)

// Port is one port a service balances.
type Port struct {
	Proto string // "tcp" or "udp"
	Port  uint16
}

func (p Port) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Proto) }

// ParsePort parses "80", "80/tcp" or "53/udp" (tcp when no protocol is given).
func ParsePort(s string) (Port, error) {
	num, proto, found := strings.Cut(s, "/")
	if !found {
		proto = "tcp"
	}
	proto = strings.ToLower(proto)
	if proto != "tcp" && proto != "udp" {
		return Port{}, fmt.Errorf("invalid port %q: protocol must be tcp or udp", s)
	}
	var n uint64
	if _, err := fmt.Sscanf(num, "%d", &n); err != nil || fmt.Sprint(n) != num || n == 0 || n > 65535 {
		return Port{}, fmt.Errorf("invalid port %q: the port must be a number from 1 to 65535", s)
	}
	return Port{Proto: proto, Port: uint16(n)}, nil
}

// Service is one virtual IP and the backends connections to it are spread over.
type Service struct {
	// ID names the service's chain and sticky map: letters, digits and '_' only,
	// at most 64 characters, unique in the Table.
	ID       string
	VIP      netip.Addr // IPv4
	Ports    []Port     // empty: every protocol and port
	Backends []netip.Addr
	Sticky   time.Duration // 0: no affinity; otherwise the affinity timeout (≥ 1 s)
}

// normalize validates s and returns it with sorted, unique ports and backends.
func normalize(s Service) (Service, error) {
	if s.ID == "" || len(s.ID) > 64 || strings.IndexFunc(s.ID, badIDRune) >= 0 {
		return s, fmt.Errorf("invalid service ID %q", s.ID)
	}
	if s.VIP = s.VIP.Unmap(); !s.VIP.Is4() || s.VIP.IsUnspecified() {
		return s, fmt.Errorf("service %s: virtual IP %v is not an IPv4 address", s.ID, s.VIP)
	}
	if s.Sticky != 0 && s.Sticky < time.Second {
		return s, fmt.Errorf("service %s: sticky timeout %v is under 1s", s.ID, s.Sticky)
	}
	s.Sticky = s.Sticky.Truncate(time.Second)
	bs := make([]netip.Addr, 0, len(s.Backends))
	for _, b := range s.Backends {
		if b = b.Unmap(); !b.Is4() {
			return s, fmt.Errorf("service %s: backend %v is not an IPv4 address", s.ID, b)
		}
		bs = append(bs, b)
	}
	slices.SortFunc(bs, netip.Addr.Compare)
	s.Backends = slices.Compact(bs)
	ps := slices.Clone(s.Ports)
	for _, p := range ps {
		if (p.Proto != "tcp" && p.Proto != "udp") || p.Port == 0 {
			return s, fmt.Errorf("service %s: invalid port %v", s.ID, p)
		}
	}
	slices.SortFunc(ps, func(a, b Port) int { return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port)) })
	s.Ports = slices.Compact(ps)
	return s, nil
}

func badIDRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_')
}

func (s Service) equalDispatch(o Service) bool {
	return s.VIP == o.VIP && slices.Equal(s.Ports, o.Ports)
}

func (s Service) equalChain(o Service) bool {
	return s.Sticky == o.Sticky && slices.Equal(s.Backends, o.Backends)
}

// Options configure a Table.
type Options struct {
	// NetNS is the namespace to program; it must stay open until Close.
	NetNS  netns.NsHandle
	Logger *slog.Logger
}

// ErrClosed is returned by methods called after Close.
var ErrClosed = errors.New("load balancer table is closed")

// Table keeps the desired services of one namespace and programs them. It is safe
// for concurrent use.
type Table struct {
	log *slog.Logger
	k   kernel

	mu     sync.Mutex // guards the fields below; held across kernel batches
	svcs   map[string]Service
	slots  map[string][]netip.Addr // by service ID: the Slots backends of its slot table (nil: none)
	vips   map[netip.Addr]string   // VIP → service ID
	c      conn                    // nil until first use and after a failed batch
	synced bool                    // the kernel holds exactly the rendering of svcs
	closed bool
}

// kernel is the Table's seam: a lasting nftables connection and the conntrack table.
// Both are called with Table.mu held.
type kernel struct {
	dial        func() (conn, error)
	deleteStale func(vip netip.Addr, backends []netip.Addr) (uint, error)
	close       func() // releases what deleteStale keeps open
}

// New returns a Table for opts.NetNS. It does not touch the kernel until the first
// change.
func New(_ context.Context, opts Options) (*Table, error) {
	if opts.NetNS <= 0 {
		return nil, errors.New("lb: a network namespace handle is required")
	}
	ns := opts.NetNS
	ct := &Conntrack{NS: ns}
	return newTable(kernel{
		dial:        func() (conn, error) { return dialAt(ns) },
		deleteStale: ct.DeleteStale,
		close:       ct.Close,
	}, opts.Logger), nil
}

func newTable(k kernel, log *slog.Logger) *Table {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Table{log: log.With("component", "lb"), k: k, svcs: map[string]Service{}, slots: map[string][]netip.Addr{}, vips: map[netip.Addr]string{}}
}

// Set adds service s or replaces the service with its ID, in one batch. Setting
// the same state again sends nothing.
func (t *Table) Set(ctx context.Context, s Service) error {
	s, err := normalize(s)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	if id, taken := t.vips[s.VIP]; taken && id != s.ID {
		return fmt.Errorf("service %s: virtual IP %v is service %s's", s.ID, s.VIP, id)
	}
	old, had := t.svcs[s.ID]
	if had && old.equalDispatch(s) && old.equalChain(s) && t.synced {
		return nil
	}
	if err := t.applyLocked(ctx, s.ID, &s); err != nil {
		return fmt.Errorf("programming service %s: %w", s.ID, err)
	}
	if had {
		t.flushRemoved(old, s)
	}
	return nil
}

// Remove deletes service id in one batch. Removing an unknown service is a no-op.
func (t *Table) Remove(ctx context.Context, id string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	old, had := t.svcs[id]
	if !had {
		return nil
	}
	if err := t.applyLocked(ctx, id, nil); err != nil {
		return fmt.Errorf("removing service %s: %w", id, err)
	}
	t.flushRemoved(old, Service{})
	return nil
}

// Services returns the desired services, sorted by ID.
func (t *Table) Services() []Service {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Service, 0, len(t.svcs))
	for _, s := range t.svcs {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b Service) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Close releases the connection. The kernel table is left as it is (it goes with
// its namespace); call Flush first to delete it.
func (t *Table) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	if t.k.close != nil {
		t.k.close()
	}
	return t.dropConnLocked()
}

// Flush deletes the table from the kernel and forgets every service.
func (t *Table) Flush(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	c, err := t.connLocked()
	if err != nil {
		return err
	}
	tbl := table()
	c.AddTable(tbl)
	c.DelTable(tbl)
	if err := c.Flush(); err != nil {
		t.dropConnLocked()
		return fmt.Errorf("deleting table: %w", err)
	}
	t.svcs, t.slots, t.vips = map[string]Service{}, map[string][]netip.Addr{}, map[netip.Addr]string{}
	t.synced = false
	return nil
}

// applyLocked changes service id to want (nil: removed) in one batch: an
// incremental one when the kernel is in sync, else a rewrite of the whole table.
// On error the desired state is unchanged.
func (t *Table) applyLocked(ctx context.Context, id string, want *Service) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := t.connLocked()
	if err != nil {
		return err
	}
	var newSlots []netip.Addr
	if want != nil {
		newSlots = Assign(t.slots[id], want.Backends)
	}
	old, had := t.svcs[id]
	oldSlots := t.slots[id]
	if t.synced {
		var oldp *Service
		if had {
			oldp = &old
		}
		err = queueChange(c, oldp, oldSlots, want, newSlots)
	}
	// The desired state changes in place (a copy would cost O(services) per change)
	// and is put back if the batch fails.
	t.setLocked(id, want, newSlots)
	if err == nil && !t.synced {
		err = queueRewrite(c, t.svcs, t.slots)
	}
	if err == nil {
		err = c.Flush()
	}
	if err != nil {
		t.dropConnLocked()
		if had {
			t.setLocked(id, &old, oldSlots)
		} else {
			t.setLocked(id, nil, nil)
		}
		return err
	}
	t.synced = true
	return nil
}

func (t *Table) setLocked(id string, s *Service, slots []netip.Addr) {
	if old, ok := t.svcs[id]; ok {
		delete(t.vips, old.VIP)
	}
	if s == nil {
		delete(t.svcs, id)
		delete(t.slots, id)
		return
	}
	t.svcs[id], t.slots[id], t.vips[s.VIP] = *s, slots, id
}

func (t *Table) connLocked() (conn, error) {
	if t.c != nil {
		return t.c, nil
	}
	c, err := t.k.dial()
	if err != nil {
		return nil, fmt.Errorf("opening nftables connection: %w", err)
	}
	t.c = c
	return c, nil
}

// dropConnLocked closes the connection after a failed batch (its queue may hold
// half a batch) and marks the kernel out of sync.
func (t *Table) dropConnLocked() error {
	t.synced = false
	if t.c == nil {
		return nil
	}
	err := t.c.CloseLasting()
	t.c = nil
	return err
}

// flushRemoved deletes the conntrack entries of UDP flows, and of TCP flows never
// answered, through old's VIP to backends that the new state no longer has behind
// the same VIP (Conntrack.DeleteStale). Errors are logged: the batch has landed and
// the flows time out by themselves.
func (t *Table) flushRemoved(old, now Service) {
	var gone []netip.Addr
	for _, b := range old.Backends {
		if now.VIP != old.VIP || !slices.Contains(now.Backends, b) {
			gone = append(gone, b)
		}
	}
	if len(gone) == 0 || t.k.deleteStale == nil {
		return
	}
	n, err := t.k.deleteStale(old.VIP, gone)
	if err != nil {
		t.log.Warn("deleting flows to removed backends", "service", old.ID, "vip", old.VIP, "err", err)
		return
	}
	if n > 0 {
		t.log.Debug("deleted flows to removed backends", "service", old.ID, "flows", n)
	}
}

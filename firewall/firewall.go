package firewall

import (
	"context"
	"errors"
	"fmt"
	"github.com/piernet/pier/internal/nlsock"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Options configure a Firewall.
type Options struct {
	// NetNS is the network namespace to program. netns.None() (-1) or the
	// zero value means the namespace of the calling thread at the time of
	// New (pinned then, so later calls from any thread program it). A
	// handle passed here must stay open until Close.
	NetNS  netns.NsHandle
	Logger *slog.Logger
}

// ErrClosed is returned by methods called after Close.
var ErrClosed = errors.New("firewall is closed")

// Firewall keeps pier's desired firewall state and programs it into the
// kernel. It is safe for concurrent use.
type Firewall struct {
	log    *slog.Logger
	k      kernel
	ownsNS netns.NsHandle // namespace handle opened by New, closed by Close; -1 if none

	portsMu  sync.Mutex      // guards ownPorts only; never held with mu
	ownPorts map[uint32]bool // netlink port IDs of the Firewall's own sockets

	mu        sync.Mutex // guards the fields below; held across kernel batches
	bridges   map[string]Bridge
	ports     map[string][]PortBinding // owner -> normalized bindings
	portOwner map[portKey]string       // published host port -> owner
	watch     *watcher                 // nil until Start
	// conn is the lasting connection, dialed on first use and dropped after
	// a failed batch (see batchLocked). It is lasting because closing a
	// netlink socket after deleting set elements waits for the kernel's
	// deferred nf_tables cleanup, an RCU grace period: 7-20 ms per change on
	// the target machine, against ~50 µs on a lasting socket.
	conn conn
	// synced is true when the kernel is known to hold exactly the rendering
	// of bridges and ports: false before the first write and after a failed
	// batch, so that the next change rewrites the whole table.
	synced bool
	closed bool
	// afterHeal run after the table was restored from a change by another process
	// (other pier tables in the namespace were most likely hit too: `nft flush
	// ruleset`). Set before Start.
	afterHeal []func(context.Context)
}

// AfterHeal registers fn to run after each restoration of the table from another
// process's change (before Start): pier's other nftables tables heal with it.
func (f *Firewall) AfterHeal(fn func(context.Context)) { f.afterHeal = append(f.afterHeal, fn) }

// kernel is the Firewall's seam to the kernel: the nftables connection it
// writes with (and that socket's netlink port ID), the nftables
// notifications, and the conntrack table.
type kernel struct {
	dial      func() (conn, uint32, error) // a lasting connection
	subscribe func() (events, error)
	conntrack func() (conntracker, error)
}

// batchBuffer is the send buffer of the nftables socket. A batch goes out
// in one sendmsg and the kernel refuses it if it exceeds the buffer: a
// whole-table rewrite takes ~130 bytes per published port, so the default
// limit (208 KiB) would stop at about 1,500 ports. Memory is only used
// while a batch is in flight.
const batchBuffer = 64 << 20

// New returns a Firewall for the namespace in opts. It does not touch the
// kernel: the table is written on the first change, by Reconcile or by
// Start.
func New(_ context.Context, opts Options) (*Firewall, error) {
	ns, owned := opts.NetNS, netns.None()
	if ns <= 0 {
		cur, err := netns.Get()
		if err != nil {
			return nil, fmt.Errorf("opening current network namespace: %w", err)
		}
		ns, owned = cur, cur
	}
	f := newFirewall(kernel{
		dial:      func() (conn, uint32, error) { return dialAt(ns) },
		subscribe: func() (events, error) { return subscribeAt(ns) },
		conntrack: func() (conntracker, error) { return openConntrack(ns) },
	}, opts.Logger)
	f.ownsNS = owned
	return f, nil
}

// dialAt opens a lasting nftables connection in ns.
func dialAt(ns netns.NsHandle) (conn, uint32, error) {
	var port uint32
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)), nftables.AsLasting(),
		nftables.WithSockOptions(func(nc *netlink.Conn) error {
			var err error
			port, err = portID(nc)
			return errors.Join(err, nlsock.SetBuffer(nc, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, batchBuffer))
		}))
	return c, port, err
}

// newFirewall returns a Firewall programming through k.
func newFirewall(k kernel, log *slog.Logger) *Firewall {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Firewall{
		log:       log.With("component", "firewall"),
		k:         k,
		ownsNS:    netns.None(),
		ownPorts:  map[uint32]bool{},
		bridges:   map[string]Bridge{},
		ports:     map[string][]PortBinding{},
		portOwner: map[portKey]string{},
	}
}

// SetBridge adds or replaces the state of bridge b.Name in one batch. Setting
// the same state again sends nothing. On error the desired state is unchanged.
func (f *Firewall) SetBridge(ctx context.Context, b Bridge) error {
	b, err := normalize(b)
	if err == nil {
		f.mu.Lock()
		defer f.mu.Unlock()
		err = f.applyLocked(ctx, b.Name, &b)
	}
	if err != nil {
		return fmt.Errorf("programming bridge %q: %w", b.Name, err)
	}
	return nil
}

// RemoveBridge removes bridge name's state in one batch. Removing an unknown
// bridge is a no-op. On error the desired state is unchanged.
func (f *Firewall) RemoveBridge(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.bridges[name]; !ok {
		return nil
	}
	if err := f.applyLocked(ctx, name, nil); err != nil {
		return fmt.Errorf("removing bridge %q: %w", name, err)
	}
	return nil
}

// Reconcile deletes pier's table, if any, and writes the whole desired state,
// in one atomic batch. Use it at start-up and to repair the table after
// someone else changed or deleted it (see Installed).
func (f *Firewall) Reconcile(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkLocked(ctx); err != nil {
		return err
	}
	f.synced = false
	if err := f.batchLocked(func(c conn) error { return writeAll(c, desired(f.bridges, f.ports)) }); err != nil {
		return fmt.Errorf("reconciling firewall: %w", err)
	}
	f.synced = true
	return nil
}

// Installed reports whether pier's table exists in the kernel. A watcher can
// poll it (or listen for table events) and call Reconcile when it is false.
func (f *Firewall) Installed(ctx context.Context) (bool, error) {
	f.mu.Lock() // keeps Close from closing the namespace under us
	defer f.mu.Unlock()
	if err := f.checkLocked(ctx); err != nil {
		return false, err
	}
	c, err := f.connLocked()
	if err != nil {
		return false, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		f.dropConnLocked()
		return false, fmt.Errorf("listing nftables tables: %w", err)
	}
	return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == tableName }), nil
}

// State returns a copy of the desired state.
func (f *Firewall) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return stateOf(f.bridges, f.ports)
}

// Close stops the watcher (if started) and releases the namespace handle
// New opened. It leaves the kernel table in place, so traffic keeps flowing
// while pier restarts. Close is idempotent.
func (f *Firewall) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	w := f.watch
	f.watch = nil
	f.mu.Unlock()
	if w != nil {
		w.stop() // its goroutines take mu
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropConnLocked()
	if f.ownsNS.IsOpen() {
		return f.ownsNS.Close()
	}
	return nil
}

func stateOf(bridges map[string]Bridge, ports map[string][]PortBinding) State {
	s := State{Bridges: make([]Bridge, 0, len(bridges)), Ports: clonePorts(ports)}
	for _, name := range slices.Sorted(maps.Keys(bridges)) {
		s.Bridges = append(s.Bridges, bridges[name].clone())
	}
	return s
}

func (f *Firewall) checkLocked(ctx context.Context) error {
	if f.closed {
		return ErrClosed
	}
	return ctx.Err()
}

// applyLocked sets bridge name to *b (or removes it if b is nil) in the
// desired state and programs the kernel; on error it restores the old
// state. Normally that is one batch of set-element changes; if the kernel
// state is unknown, or the kernel rejects the incremental batch, the whole
// table is rewritten in one batch instead.
func (f *Firewall) applyLocked(ctx context.Context, name string, b *Bridge) error {
	if err := f.checkLocked(ctx); err != nil {
		return err
	}
	prev, had := f.bridges[name]
	var next Bridge
	if b != nil {
		next = *b
	}
	before := affected(f.bridges, name, prev, next)
	// Switch to the new state in place (copying the map would make a change
	// cost O(bridges)); undo restores it.
	undo := func() {
		if had {
			f.bridges[name] = prev
		} else {
			delete(f.bridges, name)
		}
	}
	if b != nil {
		f.bridges[name] = next
	} else {
		delete(f.bridges, name)
	}
	if err := f.programLocked(diff(before, affected(f.bridges, name, prev, next))); err != nil {
		undo()
		return err
	}
	return nil
}

// programLocked makes the kernel hold desired(f.bridges), given the element
// changes from the previous state: one batch of those changes, or one
// rewrite of the table when the kernel state is unknown or the changes are
// rejected.
func (f *Firewall) programLocked(changes []setChange) error {
	if f.synced {
		if len(changes) == 0 {
			return nil
		}
		err := f.batchLocked(func(c conn) error { return writeChanges(c, changes) })
		if err == nil {
			return nil
		}
		f.synced = false
		f.log.Warn("incremental firewall update rejected, rewriting table", "err", err)
	}
	if err := f.batchLocked(func(c conn) error { return writeAll(c, desired(f.bridges, f.ports)) }); err != nil {
		return err
	}
	f.synced = true
	return nil
}

// connLocked returns the lasting connection, dialing it if needed.
func (f *Firewall) connLocked() (conn, error) {
	if f.conn == nil {
		c, port, err := f.k.dial()
		if err != nil {
			return nil, fmt.Errorf("opening nftables connection: %w", err)
		}
		f.addOwnPort(port)
		f.conn = c
	}
	return f.conn, nil
}

// subscribe opens the notification socket.
func (f *Firewall) subscribe() (events, error) { return f.k.subscribe() }

// openConntrackLocked opens a conntrack connection; the lock keeps Close
// from closing the namespace handle meanwhile.
func (f *Firewall) openConntrackLocked() (conntracker, error) { return f.k.conntrack() }

// dropConnLocked closes the connection; the next batch dials a new one.
func (f *Firewall) dropConnLocked() {
	if f.conn != nil {
		_ = f.conn.CloseLasting()
		f.conn = nil
	}
}

// batchLocked queues a batch with build and sends it. After a failure the
// connection is dropped: *nftables.Conn keeps messages queued before a
// failed call, may hold unread acknowledgements, and keeps a serialization
// error forever.
func (f *Firewall) batchLocked(build func(c conn) error) error {
	c, err := f.connLocked()
	if err != nil {
		return err
	}
	if err = build(c); err == nil {
		err = c.Flush()
	}
	if err != nil {
		f.dropConnLocked()
		return fmt.Errorf("sending nftables batch: %w", err)
	}
	return nil
}

// writeChanges queues element deletions and additions.
func writeChanges(c conn, changes []setChange) error {
	t := newTable()
	for _, ch := range changes {
		s := ch.set.set(t)
		if err := inChunks(encodeAll(ch.del), func(es []nftables.SetElement) error { return c.SetDeleteElements(s, es) }); err != nil {
			return fmt.Errorf("deleting elements of set %s: %w", s.Name, err)
		}
		if err := inChunks(encodeAll(ch.add), func(es []nftables.SetElement) error { return c.SetAddElements(s, es) }); err != nil {
			return fmt.Errorf("adding elements to set %s: %w", s.Name, err)
		}
	}
	return nil
}

// maxElemsPerMsg bounds the elements of one netlink message. The element
// list is one attribute, whose length field has 16 bits: past 64 KiB it
// wraps and the kernel silently takes only the first elements. An element
// is at most ~260 bytes (a 32-byte key and key end, a 20-byte value, a
// 128-byte comment, attribute headers).
const maxElemsPerMsg = 200

// inChunks calls add with consecutive chunks of es, each small enough for
// one message. All messages still go in one batch.
func inChunks(es []nftables.SetElement, add func([]nftables.SetElement) error) error {
	for len(es) > 0 {
		n := min(len(es), maxElemsPerMsg)
		if n < len(es) && es[n].IntervalEnd {
			n++ // keep an interval's start and end together
		}
		if err := add(es[:n]); err != nil {
			return err
		}
		es = es[n:]
	}
	return nil
}

// writeAll queues: delete pier's table if it exists, then the skeleton with
// the elements of want. "add table; delete table" makes the deletion succeed
// whether or not the table existed.
func writeAll(c conn, want contents) error {
	t := newTable()
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	for _, d := range allSets {
		s := d.set(t)
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("adding set %s: %w", d.name, err)
		}
		elems := encodeAll(sortedElements(want[d.name]))
		if err := inChunks(elems, func(es []nftables.SetElement) error { return c.SetAddElements(s, es) }); err != nil {
			return fmt.Errorf("adding elements to set %s: %w", d.name, err)
		}
	}
	for _, cd := range chains() {
		ch := c.AddChain(cd.chain(t))
		for _, r := range cd.rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.exprs})
		}
	}
	return nil
}

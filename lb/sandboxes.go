package lb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Sandboxes keeps one Table per sandbox namespace, opened by path on first use. It is
// what the controller programs services through. Safe for concurrent use.
type Sandboxes struct {
	log *slog.Logger

	mu     sync.Mutex // guards tables (not held across kernel batches)
	tables map[string]*nsTable
}

type nsTable struct {
	ns  vns.NsHandle
	tbl *Table
}

// NewSandboxes returns an empty set of tables.
func NewSandboxes(log *slog.Logger) *Sandboxes {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sandboxes{log: log, tables: map[string]*nsTable{}}
}

func (m *Sandboxes) table(ctx context.Context, key string) (*Table, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t, ok := m.tables[key]; ok {
		return t.tbl, nil
	}
	ns, err := vns.GetFromPath(key)
	if err != nil {
		return nil, fmt.Errorf("opening sandbox namespace %s: %w", key, err)
	}
	tbl, err := New(ctx, Options{NetNS: ns, Logger: m.log})
	if err != nil {
		ns.Close()
		return nil, err
	}
	m.tables[key] = &nsTable{ns: ns, tbl: tbl}
	return tbl, nil
}

// Set programs service s in the sandbox namespace at key.
func (m *Sandboxes) Set(ctx context.Context, key string, s Service) error {
	t, err := m.table(ctx, key)
	if err != nil {
		return err
	}
	return t.Set(ctx, s)
}

// Remove deletes service id from the sandbox at key (a no-op for an unknown one).
func (m *Sandboxes) Remove(ctx context.Context, key, id string) error {
	m.mu.Lock()
	t, ok := m.tables[key]
	m.mu.Unlock()
	if !ok {
		return nil
	}
	return t.tbl.Remove(ctx, id)
}

// Forget releases the table of a sandbox that is going away (its rules go with its
// namespace).
func (m *Sandboxes) Forget(key string) {
	m.mu.Lock()
	t, ok := m.tables[key]
	delete(m.tables, key)
	m.mu.Unlock()
	if ok {
		t.tbl.Close()
		t.ns.Close()
	}
}

// Close releases every table.
func (m *Sandboxes) Close() error {
	m.mu.Lock()
	keys := make([]string, 0, len(m.tables))
	for k := range m.tables {
		keys = append(keys, k)
	}
	m.mu.Unlock()
	for _, k := range keys {
		m.Forget(k)
	}
	return nil
}

// Established counts the TCP connections established in the namespace at key with a
// peer that is not loopback: what a draining task still serves.
func (m *Sandboxes) Established(_ context.Context, key string) (int, error) {
	h, err := sockDiag(key)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	n := 0
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := h.SocketDiagTCP(fam)
		if err != nil {
			return n, fmt.Errorf("listing TCP sockets: %w", err)
		}
		for _, s := range socks {
			peer, ok := netip.AddrFromSlice(s.ID.Destination)
			if s.State == netlink.TCP_ESTABLISHED && ok && !peer.Unmap().IsLoopback() {
				n++
			}
		}
	}
	return n, nil
}

// Listening reports whether a socket in the namespace at key listens on one of ports:
// a TCP socket in LISTEN, or a UDP socket bound to the port.
func (m *Sandboxes) Listening(_ context.Context, key string, ports []Port) (bool, error) {
	h, err := sockDiag(key)
	if err != nil {
		return false, err
	}
	defer h.Close()
	want := map[Port]bool{}
	for _, p := range ports {
		want[p] = true
	}
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		for proto, list := range map[string]func(uint8) ([]*netlink.Socket, error){"tcp": h.SocketDiagTCP, "udp": h.SocketDiagUDP} {
			socks, err := list(fam)
			if err != nil {
				return false, fmt.Errorf("listing %s sockets: %w", proto, err)
			}
			for _, s := range socks {
				if (proto == "udp" || s.State == netlink.TCP_LISTEN) && want[Port{Proto: proto, Port: s.ID.SourcePort}] {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

// sockDiag opens a sock_diag handle in the namespace at key.
func sockDiag(key string) (*netlink.Handle, error) {
	ns, err := vns.GetFromPath(key)
	if err != nil {
		return nil, fmt.Errorf("opening sandbox namespace %s: %w", key, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("opening sock_diag: %w", err)
	}
	return h, nil
}

// Sync makes svcs the services of the sandbox at key: each is set (a no-op when
// unchanged) and the table's others are removed. A sandbox that never had a service
// and gets none is not touched.
func (m *Sandboxes) Sync(ctx context.Context, key string, svcs []Service) error {
	m.mu.Lock()
	_, known := m.tables[key]
	m.mu.Unlock()
	if !known && len(svcs) == 0 {
		return nil
	}
	t, err := m.table(ctx, key)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	var errs []error
	for _, s := range svcs {
		want[s.ID] = true
		errs = append(errs, t.Set(ctx, s))
	}
	for _, s := range t.Services() {
		if !want[s.ID] {
			errs = append(errs, t.Remove(ctx, s.ID))
		}
	}
	return errors.Join(errs...)
}

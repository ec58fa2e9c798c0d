package portmap

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Runner runs fn on an OS thread inside a network namespace.
// *netns.Namespace satisfies it.
type Runner interface {
	Do(fn func() error) error
}

// Host is the Allocator's seam to the host network namespace.
type Host interface {
	// Probe calls fn with a Prober valid only during the call; all its
	// probes run in one switch into the namespace.
	Probe(ctx context.Context, fn func(Prober) error) error
}

// Prober checks host ports.
type Prober interface {
	// Bind binds a socket of proto to addr and closes it at once. It fails
	// with an error matching unix.EADDRINUSE if another socket holds the
	// port, unix.EADDRNOTAVAIL if addr is not a local address.
	Bind(proto Proto, addr netip.AddrPort) error
	// BindAll is Bind for both 0.0.0.0 and :: at once: one dual-stack
	// socket, which conflicts with any IPv4 or IPv6 holder of the port.
	BindAll(proto Proto, port uint16) error
	// PortRange returns net.ipv4.ip_local_port_range.
	PortRange() (first, last uint16, err error)
}

// NamespaceHost returns the Host of the namespace ns runs in.
func NamespaceHost(ns Runner) Host { return nsHost{ns} }

type nsHost struct{ ns Runner }

func (h nsHost) Probe(ctx context.Context, fn func(Prober) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return h.ns.Do(func() error { return fn(threadProber{}) })
}

// threadProber probes in the calling thread's namespace.
type threadProber struct{}

func (t threadProber) Bind(proto Proto, addr netip.AddrPort) error {
	return t.bind(proto, addr, addr.Addr().Is6())
}

func (t threadProber) BindAll(proto Proto, port uint16) error {
	err := t.bind(proto, netip.AddrPortFrom(netip.IPv6Unspecified(), port), false)
	if errors.Is(err, unix.EAFNOSUPPORT) { // no IPv6 in this kernel
		return t.Bind(proto, netip.AddrPortFrom(netip.IPv4Unspecified(), port))
	}
	return err
}

// bind binds a probe socket; v6only false makes an IPv6 socket dual-stack.
func (threadProber) bind(proto Proto, addr netip.AddrPort, v6only bool) error {
	fd, err := newSocket(proto, addr.Addr().Is6())
	if err != nil {
		if proto == SCTP && (errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ESOCKTNOSUPPORT)) {
			return nil // no SCTP in this kernel: nothing can hold the port
		}
		return err
	}
	defer unix.Close(fd)
	if addr.Addr().Is6() && !v6only {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
			return err
		}
	}
	if proto != UDP {
		// A TCP socket in TIME_WAIT must not count as a holder.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
	}
	return unix.Bind(fd, sockaddr(addr))
}

func (threadProber) PortRange() (uint16, uint16, error) {
	// /proc/sys/net shows the namespace of the thread that opens it.
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, fmt.Errorf("reading local port range: %w", err)
	}
	return parsePortRange(string(b))
}

func parsePortRange(s string) (uint16, uint16, error) {
	f := strings.Fields(s)
	if len(f) == 2 {
		lo, err1 := strconv.ParseUint(f[0], 10, 16)
		hi, err2 := strconv.ParseUint(f[1], 10, 16)
		if err1 == nil && err2 == nil && lo > 0 && lo <= hi {
			return uint16(lo), uint16(hi), nil
		}
	}
	return 0, 0, fmt.Errorf("unexpected ip_local_port_range %q", s)
}

// newSocket creates a socket for proto in the calling thread's namespace.
// IPv6 sockets are v6-only: IPv4 is probed (and served) separately.
func newSocket(proto Proto, v6 bool) (int, error) {
	family, typ := unix.AF_INET, unix.SOCK_STREAM
	if v6 {
		family = unix.AF_INET6
	}
	if proto == UDP {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, int(proto.Number()))
	if err != nil {
		return -1, fmt.Errorf("creating %s socket: %w", proto, err)
	}
	if v6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
}

func addrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

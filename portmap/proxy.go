package portmap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Proxy forwards connections to published ports on the loopback addresses
// 127.0.0.1 and ::1, which the kernel cannot DNAT to a container (IPv6
// loopback never leaves the host; IPv4 loopback would need route_localnet,
// which exposes the host's localhost services to its bridges), and serves
// the bindings the kernel cannot NAT at all: a host address of the other
// family than the container's (Binding.Proxied; e.g. :: for an IPv4-only
// container, as Docker's userland proxy does). All other traffic is served
// by the firewall's DNAT maps, not by the proxy.
//
// A binding on 0.0.0.0 gets a listener on 127.0.0.1; one on ::, a
// listener on ::1; one on a loopback address, a listener on that address;
// a proxied binding, a listener on its host address itself (all addresses
// of that family for a wildcard).
// TCP is spliced both ways (splice(2), half-closes passed on); UDP keeps one
// upstream socket per client (a flow) that closes after an idle timeout.
// SCTP is not proxied: it is rare on loopback and Go has no SCTP sockets.
//
// One goroutine owned by Start and Close waits on all listeners (epoll), so
// a listener costs a socket and a few hundred bytes, not a goroutine; each
// TCP connection and UDP flow has its own goroutines while it lives.
type Proxy struct {
	ns      Runner
	log     *slog.Logger
	idle    time.Duration // UDP flow idle timeout
	timeout time.Duration // upstream connect timeout

	wg    sync.WaitGroup // every goroutine the proxy started
	rxBuf []byte         // datagram buffer, used only by the poll goroutine

	mu     sync.Mutex // guards the fields below; taken before listener locks
	owners map[string][]*listener
	poll   *poller // nil before Start and after Close
	closed bool
}

// ProxyOptions configure a Proxy.
type ProxyOptions struct {
	// UDPIdleTimeout closes a UDP flow without traffic from its client for
	// this long. Default 90 s (Docker's).
	UDPIdleTimeout time.Duration
	// DialTimeout bounds connecting to the container. Default 5 s.
	DialTimeout time.Duration
	Logger      *slog.Logger
}

// NewProxy returns a Proxy listening and dialing in the namespace of ns
// (the host). It starts nothing: call Start.
func NewProxy(ns Runner, opts ProxyOptions) *Proxy {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.UDPIdleTimeout <= 0 {
		opts.UDPIdleTimeout = 90 * time.Second
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	return &Proxy{
		ns:      ns,
		log:     opts.Logger.With("component", "portmap-proxy"),
		idle:    opts.UDPIdleTimeout,
		timeout: opts.DialTimeout,
		owners:  map[string][]*listener{},
	}
}

// ErrProxyNotRunning is returned by Set before Start and after Close.
var ErrProxyNotRunning = errors.New("loopback proxy is not running")

// Start launches the goroutine serving the listeners.
func (p *Proxy) Start(_ context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.poll != nil {
		return fmt.Errorf("starting loopback proxy: %w", ErrProxyNotRunning)
	}
	pl, err := newPoller()
	if err != nil {
		return fmt.Errorf("starting loopback proxy: %w", err)
	}
	p.poll = pl
	p.wg.Go(func() { pl.run(p.ready, p.log) })
	return nil
}

// Set makes owner's loopback listeners those that bindings need (bindings
// that need none are ignored). Unchanged listeners keep their connections.
// On error owner keeps only its unchanged listeners.
func (p *Proxy) Set(ctx context.Context, owner string, bindings []Binding) error {
	want := proxyListeners(bindings)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.poll == nil {
		return ErrProxyNotRunning
	}
	var keep []*listener
	for _, l := range p.owners[owner] {
		if _, ok := want[l.spec]; ok {
			keep = append(keep, l)
			delete(want, l.spec)
		} else {
			p.closeListenerLocked(l)
		}
	}
	opened, err := p.openLocked(ctx, want)
	p.owners[owner] = append(keep, opened...)
	if len(p.owners[owner]) == 0 {
		delete(p.owners, owner)
	}
	if err != nil {
		return fmt.Errorf("proxying loopback ports of %s: %w", owner, err)
	}
	return nil
}

// Remove closes owner's listeners and their connections.
func (p *Proxy) Remove(owner string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.owners[owner] {
		p.closeListenerLocked(l)
	}
	delete(p.owners, owner)
}

// Close closes every listener and connection and waits for the proxy's
// goroutines. It is idempotent.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for owner, ls := range p.owners {
		for _, l := range ls {
			p.closeListenerLocked(l)
		}
		delete(p.owners, owner)
	}
	pl := p.poll
	p.poll = nil
	p.mu.Unlock()
	if pl != nil {
		pl.wake()
	}
	p.wg.Wait()
	if pl != nil {
		pl.close()
	}
	return nil
}

// listenSpec is one loopback listener and where it forwards to.
type listenSpec struct {
	proto  Proto
	addr   netip.AddrPort
	target netip.AddrPort
}

// proxyListeners returns the listeners bindings need.
func proxyListeners(bindings []Binding) map[listenSpec]struct{} {
	out := map[listenSpec]struct{}{}
	for _, b := range bindings {
		if b.Proto == SCTP {
			continue
		}
		var lo netip.Addr
		switch {
		case b.Proxied():
			lo = b.HostIP
		case b.HostIP == netip.IPv4Unspecified():
			lo = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		case b.HostIP == netip.IPv6Unspecified():
			lo = netip.IPv6Loopback()
		case b.HostIP.IsLoopback():
			lo = b.HostIP
		default:
			continue
		}
		out[listenSpec{b.Proto, netip.AddrPortFrom(lo, b.HostPort), netip.AddrPortFrom(b.ContainerIP, b.ContainerPort)}] = struct{}{}
	}
	return out
}

// openLocked opens and registers listeners for specs: all sockets are
// created in one switch into the namespace. All or nothing: on error it
// closes what it opened.
func (p *Proxy) openLocked(ctx context.Context, specs map[listenSpec]struct{}) ([]*listener, error) {
	if len(specs) == 0 {
		return nil, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fds := map[listenSpec]int{}
	err := p.ns.Do(func() error {
		for s := range specs {
			fd, err := listenSocket(s.proto, s.addr)
			if errors.Is(err, unix.EAFNOSUPPORT) && s.addr.Addr().IsUnspecified() {
				continue // a host without IPv6: nothing to serve on ::
			}
			if err != nil {
				return fmt.Errorf("listening on %s/%s: %w", s.addr, s.proto, err)
			}
			fds[s] = fd
		}
		return nil
	})
	var out []*listener
	for s, fd := range fds {
		if err != nil {
			unix.Close(fd)
			continue
		}
		l := newListener(s, fd)
		if aerr := p.poll.add(l); aerr != nil {
			l.close()
			err = aerr
			continue
		}
		out = append(out, l)
	}
	if err != nil {
		for _, l := range out {
			p.closeListenerLocked(l)
		}
		return nil, err
	}
	return out, nil
}

func (p *Proxy) closeListenerLocked(l *listener) {
	if p.poll != nil {
		p.poll.remove(l)
	}
	l.close()
}

// listenSocket creates a bound (and for TCP listening) socket in the
// calling thread's namespace.
func listenSocket(proto Proto, addr netip.AddrPort) (int, error) {
	fd, err := newSocket(proto, addr.Addr().Is6())
	if err != nil {
		return -1, err
	}
	if proto == TCP {
		err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	}
	if err == nil {
		err = unix.Bind(fd, sockaddr(addr))
	}
	if err == nil && proto == TCP {
		err = unix.Listen(fd, unix.SOMAXCONN)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// ready serves l after the poller saw it readable; it runs on the poll
// goroutine and never blocks for long.
func (p *Proxy) ready(l *listener) {
	if l.spec.proto == TCP {
		p.acceptAll(l)
	} else {
		p.receiveAll(l)
	}
}

// socketIn creates a socket in the host namespace.
func (p *Proxy) socketIn(proto Proto, v6 bool) (int, error) {
	fd := -1
	err := p.ns.Do(func() error {
		var err error
		fd, err = newSocket(proto, v6)
		return err
	})
	return fd, err
}

// isTemporary reports accept errors after which the listener is still good.
func isTemporary(err error) bool {
	return errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.EINTR) || errors.Is(err, unix.EPROTO)
}

// isExhausted reports accept errors caused by resource limits.
func isExhausted(err error) bool {
	return errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.ENOMEM)
}

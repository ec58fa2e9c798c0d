package portmap

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// maxFlows bounds the UDP clients one listener serves at a time; datagrams
// from further clients are dropped until a flow times out. Each flow holds
// a 64 KiB receive buffer, so a listener uses at most 64 MiB.
const maxFlows = 1024

// maxDatagram is the largest UDP payload.
const maxDatagram = 65535

// flow is one UDP client of a listener: a socket connected to the container.
type flow struct {
	client netip.AddrPort
	conn   *net.UDPConn
	last   atomic.Int64 // unix nanoseconds of the client's last datagram
}

// receiveAll forwards every queued datagram of l without blocking. It runs
// on the poll goroutine, so one buffer serves all listeners.
func (p *Proxy) receiveAll(l *listener) {
	if p.rxBuf == nil {
		p.rxBuf = make([]byte, maxDatagram)
	}
	buf := p.rxBuf
	l.withFD(func(fd int) {
		for {
			n, from, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
			if err != nil {
				return
			}
			p.forward(l, addrPortOf(from), buf[:n])
		}
	})
}

// forward sends one datagram from client to the container.
func (p *Proxy) forward(l *listener, client netip.AddrPort, data []byte) {
	f := p.flowFor(l, client)
	if f == nil {
		return
	}
	rc, err := f.conn.SyscallConn()
	if err != nil {
		return
	}
	// Never wait: a full socket buffer drops the datagram, as UDP may.
	_ = rc.Write(func(fd uintptr) bool {
		_, _ = unix.Write(int(fd), data)
		return true
	})
}

// flowFor returns client's flow, marked active now, creating it (and its
// reply goroutine) if needed; nil if l is closed, full, or the upstream
// socket fails. Marking under l.mu orders it with the idle check in
// endIdleFlow: a flow that was just used is never ended.
func (p *Proxy) flowFor(l *listener, client netip.AddrPort) *flow {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	if f := l.flows[client]; f != nil {
		f.last.Store(time.Now().UnixNano())
		return f
	}
	if len(l.flows) >= maxFlows {
		return nil
	}
	conn, err := p.dialUDP(l.spec.target)
	if err != nil {
		p.log.Debug("loopback proxy: UDP upstream", "target", l.spec.target, "err", err)
		return nil
	}
	f := &flow{client: client, conn: conn}
	f.last.Store(time.Now().UnixNano())
	l.flows[client] = f
	p.wg.Go(func() { p.replies(l, f) })
	return f
}

// dialUDP returns a UDP socket in the host namespace connected to target.
func (p *Proxy) dialUDP(target netip.AddrPort) (*net.UDPConn, error) {
	fd, err := p.socketIn(UDP, target.Addr().Is6())
	if err != nil {
		return nil, err
	}
	if err := unix.Connect(fd, sockaddr(target)); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "proxy udp upstream")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

// replies sends the container's datagrams back to the client until the
// flow has been idle for p.idle or is closed.
func (p *Proxy) replies(l *listener, f *flow) {
	defer f.conn.Close()
	buf := make([]byte, maxDatagram)
	for {
		idleFor := time.Since(time.Unix(0, f.last.Load()))
		if idleFor >= p.idle && p.endIdleFlow(l, f) {
			return
		}
		_ = f.conn.SetReadDeadline(time.Now().Add(max(p.idle-idleFor, time.Millisecond)))
		n, err := f.conn.Read(buf)
		switch {
		case err == nil:
			to := sockaddr(f.client)
			if !l.withFD(func(fd int) { _ = unix.Sendto(fd, buf[:n], unix.MSG_DONTWAIT, to) }) {
				p.endFlow(l, f)
				return
			}
		case errors.Is(err, unix.ECONNREFUSED):
			// Nothing listens in the container (yet); keep the flow.
		case errors.Is(err, os.ErrDeadlineExceeded):
			// Loop: the client may have sent since the deadline was set.
		default:
			p.endFlow(l, f)
			return
		}
	}
}

// endIdleFlow removes f if it is still idle, under the lock flowFor marks
// activity with.
func (p *Proxy) endIdleFlow(l *listener, f *flow) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(time.Unix(0, f.last.Load())) < p.idle {
		return false
	}
	if l.flows[f.client] == f {
		delete(l.flows, f.client)
	}
	return true
}

func (p *Proxy) endFlow(l *listener, f *flow) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.flows[f.client] == f {
		delete(l.flows, f.client)
	}
}

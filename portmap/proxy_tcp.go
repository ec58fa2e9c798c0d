package portmap

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// acceptAll accepts every pending connection of l without blocking.
func (p *Proxy) acceptAll(l *listener) {
	var accepted []int
	var aerr error
	l.withFD(func(fd int) {
		for {
			nfd, _, err := unix.Accept4(fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if err == nil {
				accepted = append(accepted, nfd)
				continue
			}
			if !isTemporary(err) {
				aerr = err
				return
			}
		}
	})
	for _, nfd := range accepted {
		p.serveTCP(l, nfd)
	}
	if isExhausted(aerr) {
		p.log.Warn("loopback proxy cannot accept", "listen", l.spec.addr, "err", aerr)
		time.Sleep(10 * time.Millisecond) // the listener stays readable; don't spin
	}
}

// serveTCP starts forwarding the accepted connection nfd.
func (p *Proxy) serveTCP(l *listener, nfd int) {
	f := os.NewFile(uintptr(nfd), "proxy conn")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		p.log.Warn("loopback proxy: wrapping connection", "err", err)
		return
	}
	if !l.track(c) {
		return
	}
	p.wg.Go(func() {
		defer l.untrack(c)
		defer c.Close()
		up, err := p.dialTCP(l, l.spec.target)
		if err != nil {
			p.log.Debug("loopback proxy: dialing container", "target", l.spec.target, "err", err)
			_ = c.(*net.TCPConn).SetLinger(0) // the client sees a reset, as if refused
			return
		}
		defer l.untrack(up)
		defer up.Close()
		p.splice(c.(*net.TCPConn), up.(*net.TCPConn))
	})
}

// splice copies both ways until both directions are done, passing on
// half-closes.
func (p *Proxy) splice(down, up *net.TCPConn) {
	done := make(chan struct{})
	p.wg.Go(func() {
		defer close(done)
		copyHalf(up, down)
	})
	copyHalf(down, up)
	<-done
}

// copyHalf copies from src to dst (splice(2) on Linux), then half-closes.
func copyHalf(dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		// A reset on one side resets the other.
		_ = dst.SetLinger(0)
		_ = dst.Close()
		_ = src.Close()
		return
	}
	_ = dst.CloseWrite()
	_ = src.CloseRead()
}

// dialTCP connects to target from the host namespace: the socket is made
// there, the connect runs on Go's poller, so no thread is blocked. The
// dial is tracked by l, so closing l aborts it.
func (p *Proxy) dialTCP(l *listener, target netip.AddrPort) (net.Conn, error) {
	fd, err := p.socketIn(TCP, target.Addr().Is6())
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "proxy upstream")
	defer f.Close() // the net.Conn holds a duplicate
	if !l.track(f) {
		return nil, net.ErrClosed
	}
	defer l.untrack(f)
	if err := connect(f, target, time.Now().Add(p.timeout)); err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", target, err)
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	if !l.track(c) {
		return nil, net.ErrClosed
	}
	return c, nil
}

// connect connects the non-blocking socket f to target by the deadline.
func connect(f *os.File, target netip.AddrPort, deadline time.Time) error {
	if err := f.SetWriteDeadline(deadline); err != nil {
		return err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	started := false
	var cerr error
	err = rc.Write(func(fd uintptr) bool {
		if !started {
			started = true
			cerr = unix.Connect(int(fd), sockaddr(target))
			return !errors.Is(cerr, unix.EINPROGRESS)
		}
		// Writable: the connect finished, SO_ERROR says how.
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case err != nil:
			cerr = err
		case v != 0:
			cerr = syscall.Errno(v)
		default:
			cerr = nil
		}
		return true
	})
	return errors.Join(err, cerr)
}

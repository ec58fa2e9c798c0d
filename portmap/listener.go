package portmap

import (
	"io"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"
)

// listener is one loopback socket: a listening TCP socket or a UDP socket.
// It is a raw non-blocking fd, not a net.Listener: the poller does all the
// waiting, and wrapping each socket for Go's own poller would cost four
// more system calls per listener (dup, fcntl, two epoll_ctl).
//
// Lock order: fdMu before mu; close never holds both.
type listener struct {
	spec listenSpec
	id   int32 // poller registration

	fdMu sync.RWMutex // read-held while fd is in use, write-held to close it
	fd   int          // -1 once closed

	mu     sync.Mutex // guards the fields below
	closed bool
	conns  map[io.Closer]struct{} // TCP connections (both sides), dials in progress
	flows  map[netip.AddrPort]*flow
}

// newListener takes ownership of fd.
func newListener(s listenSpec, fd int) *listener {
	return &listener{spec: s, fd: fd, conns: map[io.Closer]struct{}{}, flows: map[netip.AddrPort]*flow{}}
}

// withFD calls fn with the socket and reports true, or reports false if l
// is closed. The fd number cannot be closed (and reused) while fn runs.
func (l *listener) withFD(fn func(fd int)) bool {
	l.fdMu.RLock()
	defer l.fdMu.RUnlock()
	if l.fd < 0 {
		return false
	}
	fn(l.fd)
	return true
}

// track registers c for closing with l; it reports false (and closes c)
// if l is already closed.
func (l *listener) track(c io.Closer) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		_ = c.Close()
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *listener) untrack(c io.Closer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c)
}

// close closes the socket (which also leaves the epoll set: nothing else
// holds the file) and every connection and flow of l.
func (l *listener) close() {
	l.fdMu.Lock()
	if l.fd >= 0 {
		unix.Close(l.fd)
		l.fd = -1
	}
	l.fdMu.Unlock()

	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for c := range l.conns {
		_ = c.Close()
	}
	for _, f := range l.flows {
		_ = f.conn.Close()
	}
}

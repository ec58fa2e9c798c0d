package portmap

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// poller waits for any of many listeners to become readable: one epoll
// instance, level-triggered, served by one goroutine. Events carry a
// registration ID, never an fd, so a closed (and reused) fd number cannot
// be mistaken for a live listener.
type poller struct {
	epfd, evfd int

	mu     sync.Mutex // guards the fields below
	byID   map[int32]*listener
	nextID int32
}

// wakeID is the registration of the eventfd that stops the loop.
const wakeID = 0

func newPoller() (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err == nil {
		err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: wakeID})
	}
	if err != nil {
		unix.Close(epfd)
		if evfd > 0 {
			unix.Close(evfd)
		}
		return nil, fmt.Errorf("setting up epoll: %w", err)
	}
	return &poller{epfd: epfd, evfd: evfd, byID: map[int32]*listener{}, nextID: wakeID}, nil
}

// add registers l.
func (p *poller) add(l *listener) error {
	p.mu.Lock()
	p.nextID++
	if p.nextID <= wakeID { // wrapped around
		p.nextID = wakeID + 1
	}
	l.id = p.nextID
	p.byID[l.id] = l
	p.mu.Unlock()
	err := net.ErrClosed
	l.withFD(func(fd int) {
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: l.id})
	})
	if err != nil {
		p.remove(l)
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// remove forgets l; closing its socket takes it out of the epoll set.
func (p *poller) remove(l *listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.byID, l.id)
}

func (p *poller) lookup(id int32) *listener {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byID[id]
}

// wake makes run return.
func (p *poller) wake() {
	one := []byte{1, 0, 0, 0, 0, 0, 0, 0}
	_, _ = unix.Write(p.evfd, one)
}

// run calls ready for each readable listener until wake is called.
func (p *poller) run(ready func(*listener), log *slog.Logger) {
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			log.Error("loopback proxy stopped", "err", err)
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == wakeID {
				return
			}
			if l := p.lookup(ev.Fd); l != nil {
				ready(l)
			}
		}
	}
}

// close releases the epoll instance; run must have returned.
func (p *poller) close() {
	unix.Close(p.epfd)
	unix.Close(p.evfd)
}

package dns

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Batched UDP I/O: one recvmmsg reads every query waiting on the socket (up to
// batchSize) and one sendmmsg sends all their replies. On loopback most of a
// datagram's cost is the system call and waking the peer, so answering a burst
// with one call of each is what makes the local path fast. Buffers and headers
// are allocated once per reader; a batch allocates nothing.
const (
	batchSize  = 32
	maxQuery   = 1024      // larger queries arrive cut (MSG_TRUNC) and get FORMERR
	arenaSize  = 32 * 1024 // replies of one batch
	arenaSlack = maxUDPReply + optLen
)

// mmsghdr is struct mmsghdr from <sys/socket.h>.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

// batch is one reader's buffers for recvmmsg and sendmmsg.
type batch struct {
	rc    syscall.RawConn
	bufs  [batchSize][maxQuery]byte
	names [batchSize]unix.RawSockaddrInet6 // peers (AF_INET fits too)
	iovs  [batchSize]unix.Iovec
	hdrs  [batchSize]mmsghdr
	count int // messages read by the last recv

	arena []byte // reply bytes of the pending sends
	siovs [batchSize]unix.Iovec
	shdrs [batchSize]mmsghdr
	nsend int // pending sends
	sent  int // progress of the current sendmmsg

	err      error
	recvFn   func(fd uintptr) bool // method values, made once so calls do not allocate
	sendFn   func(fd uintptr) bool
	lastSent int
}

func newBatch(rc syscall.RawConn) *batch {
	b := &batch{rc: rc, arena: make([]byte, 0, arenaSize)}
	for i := range b.hdrs {
		b.iovs[i].Base = &b.bufs[i][0]
		b.iovs[i].SetLen(maxQuery)
		h := &b.hdrs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
		sh := &b.shdrs[i].hdr
		sh.Iov = &b.siovs[i]
		sh.SetIovlen(1)
	}
	b.recvFn, b.sendFn = b.doRecv, b.doSend
	return b
}

// recv waits for queries and reads as many as are queued (at least one).
func (b *batch) recv() (int, error) {
	for i := range b.hdrs {
		b.hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet6
		b.hdrs[i].hdr.Flags = 0
	}
	b.err, b.count = nil, 0
	if err := b.rc.Read(b.recvFn); err != nil {
		return 0, err
	}
	return b.count, b.err
}

func (b *batch) doRecv(fd uintptr) bool {
	r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), batchSize, 0, 0, 0)
	switch e {
	case 0:
		b.count = int(r)
	case unix.EAGAIN, unix.EINTR:
		return false
	default:
		b.err = e
	}
	return true
}

// packet returns the i-th query read, and false if it was cut.
func (b *batch) packet(i int) ([]byte, bool) {
	h := &b.hdrs[i]
	return b.bufs[i][:h.n], h.hdr.Flags&unix.MSG_TRUNC == 0
}

// from is the i-th query's sender.
func (b *batch) from(i int) netip.AddrPort {
	sa := &b.names[i]
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	if sa.Family == unix.AF_INET {
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port)
}

// out returns an empty slice at the free end of the arena for the next reply,
// sending what is pending first if the arena is nearly full.
func (b *batch) out() []byte {
	if cap(b.arena)-len(b.arena) < arenaSlack {
		b.flush()
	}
	return b.arena[len(b.arena):len(b.arena)]
}

// queue schedules reply (built on out()) to go back to the sender of query i.
func (b *batch) queue(i int, reply []byte) {
	if len(reply) == 0 {
		return
	}
	if unsafe.SliceData(reply) == unsafe.SliceData(b.arena[len(b.arena):]) {
		b.arena = b.arena[:len(b.arena)+len(reply)] // else it grew out of the arena: still valid
	}
	sh := &b.shdrs[b.nsend]
	sh.hdr.Name, sh.hdr.Namelen = b.hdrs[i].hdr.Name, b.hdrs[i].hdr.Namelen
	b.siovs[b.nsend].Base = unsafe.SliceData(reply)
	b.siovs[b.nsend].SetLen(len(reply))
	b.nsend++
}

// flush sends the pending replies with as few sendmmsg calls as the kernel allows.
// Errors for one datagram (the client went away) are not errors of the server.
func (b *batch) flush() {
	for b.sent = 0; b.sent < b.nsend; {
		b.lastSent = b.sent
		if err := b.rc.Write(b.sendFn); err != nil {
			break
		}
		if b.sent == b.lastSent { // an error for the first datagram: skip it
			b.sent++
		}
	}
	b.nsend, b.arena = 0, b.arena[:0]
}

func (b *batch) doSend(fd uintptr) bool {
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.shdrs[b.sent])), uintptr(b.nsend-b.sent), 0, 0, 0)
	switch e {
	case 0:
		b.sent += int(r)
	case unix.EAGAIN, unix.EINTR:
		return false
	}
	return true
}

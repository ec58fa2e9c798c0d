package dns

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/piernet/pier/netns"
	"golang.org/x/sys/unix"
)

// ListenAddr is where every sandbox finds its resolver, over UDP and TCP.
var ListenAddr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 11}), 53)

const (
	maxTCPConns   = 64               // per sandbox; more are closed at once
	tcpIdle       = 10 * time.Second // RFC 7766 suggests seconds, not minutes
	maxTCPMessage = 65535
	udpReadBuffer = 1 << 20
)

// sbConfig is a sandbox's configuration as queries use it; replaced whole on update.
type sbConfig struct {
	id        string
	internal  bool
	search    []string          // lower-cased, no trailing dot
	links     map[string][]byte // lower-cased alias → lower-cased target name
	upstreams []*upstream
	group     uint32 // cache partition of this upstream set
}

// sandbox serves one sandbox: its listeners, readers and forwarding work.
type sandbox struct {
	id      string
	log     *slog.Logger
	opts    *Options
	reg     *registry
	cache   *cache
	flights *flights
	ex      exchanger
	ns      *netns.Namespace // nil in unit tests
	udp     *net.UDPConn
	tcp     *net.TCPListener
	sem     chan struct{} // one slot per query being forwarded
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	conns   atomic.Int32 // open TCP connections
	cfg     atomic.Pointer[sbConfig]
}

// listen opens 127.0.0.11:53 over UDP and TCP on a thread inside the namespace.
func listen(ns *netns.Namespace) (*net.UDPConn, *net.TCPListener, error) {
	var udp *net.UDPConn
	var tcp *net.TCPListener
	err := ns.Do(func() error {
		var err error
		if udp, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ListenAddr)); err != nil {
			return err
		}
		growReadBuffer(udp)
		if tcp, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(ListenAddr)); err != nil {
			udp.Close()
		}
		return err
	})
	return udp, tcp, err
}

// growReadBuffer lets about a thousand queries wait on the socket (the default
// holds a few hundred): SO_RCVBUFFORCE when privileged, else as much as
// net.core.rmem_max allows.
func growReadBuffer(c *net.UDPConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpReadBuffer) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, udpReadBuffer)
		}
	})
}

// start launches the readers and the TCP accept loop.
func (sb *sandbox) start() {
	for range sb.opts.Readers {
		sb.wg.Go(sb.serveUDP)
	}
	sb.wg.Go(sb.serveTCP)
}

// close stops the sandbox's goroutines, waits for them and releases the namespace.
func (sb *sandbox) close() error {
	if sb.cancel != nil {
		sb.cancel()
	}
	var errs []error
	if sb.udp != nil {
		errs = append(errs, sb.udp.Close(), sb.tcp.Close())
	}
	sb.wg.Wait()
	err := errors.Join(errs...)
	return errors.Join(err, sb.ns.Close())
}

// serveUDP is one reader: it reads every waiting query with one system call,
// answers local names and cache hits on this goroutine into reused buffers,
// sends all those replies with one system call, and hands misses to a bounded
// forwarder.
func (sb *sandbox) serveUDP() {
	rc, err := sb.udp.SyscallConn()
	if err != nil {
		sb.log.Error("cannot serve UDP", "error", err)
		return
	}
	b, sc := newBatch(rc), newScratch()
	for {
		n, err := b.recv()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			sb.log.Debug("reading queries", "error", err)
			if !sb.pause(time.Millisecond) {
				return
			}
			continue
		}
		for i := range n {
			sb.answerUDP(b, i, sc)
		}
		b.flush()
	}
}

// answerUDP answers the i-th query of a batch (or starts forwarding it).
func (sb *sandbox) answerUDP(b *batch, i int, sc *scratch) {
	pkt, whole := b.packet(i)
	if !whole {
		if len(pkt) >= headerLen {
			b.queue(i, headerOnly(b.out(), pkt, rcodeFormErr))
		}
		return
	}
	reply, act := sb.handle(b.out(), pkt, 0, sc)
	switch act {
	case actReply:
		b.queue(i, reply)
	case actForward:
		if !sb.acquire() { // MaxInFlight queries are being forwarded already
			b.queue(i, failure(b.out(), pkt, &sc.q))
			return
		}
		sb.forwardUDP(pkt, b.from(i))
	}
}

// forwardUDP resolves a cache miss on its own goroutine, which holds the
// in-flight slot taken by the caller.
func (sb *sandbox) forwardUDP(pkt []byte, from netip.AddrPort) {
	pkt = append([]byte(nil), pkt...)
	sb.wg.Go(func() {
		defer sb.release()
		var q query
		parseQuery(pkt, &q)
		reply := sb.resolveReply(make([]byte, 0, 512), pkt, &q, q.udpLimit(), false)
		_, _ = sb.udp.WriteToUDPAddrPort(reply, from)
	})
}

func (sb *sandbox) acquire() bool {
	select {
	case sb.sem <- struct{}{}:
		return true
	default:
		sb.log.Debug("too many queries in flight; answering SERVFAIL")
		return false
	}
}

func (sb *sandbox) release() { <-sb.sem }

// resolveReply appends the upstream (or cached) reply to q, or SERVFAIL.
func (sb *sandbox) resolveReply(out, pkt []byte, q *query, limit int, tcp bool) []byte {
	cfg := sb.cfg.Load()
	if cfg.internal { // changed since the query was read
		return finish(startReply(out, pkt, q, 0, rcodeNXDomain), q)
	}
	e := sb.resolve(sb.ctx, cfg, q, tcp)
	if e == nil {
		return failure(out, pkt, q)
	}
	return e.render(out, pkt, q, sb.cache.now(), limit)
}

// serveTCP accepts connections, up to maxTCPConns at a time.
func (sb *sandbox) serveTCP() {
	for {
		c, err := sb.tcp.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			sb.log.Debug("accepting connection", "error", err)
			if !sb.pause(100 * time.Millisecond) {
				return
			}
			continue
		}
		if sb.conns.Add(1) > maxTCPConns {
			sb.conns.Add(-1)
			c.Close()
			continue
		}
		sb.wg.Go(func() {
			defer sb.conns.Add(-1)
			sb.serveConn(c)
		})
	}
}

// pause waits d unless the sandbox stops first (then it reports false).
func (sb *sandbox) pause(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-sb.ctx.Done():
		return false
	}
}

// serveConn answers length-prefixed queries in order until the client closes,
// stays idle for tcpIdle, or the sandbox stops.
func (sb *sandbox) serveConn(c *net.TCPConn) {
	defer c.Close()
	stop := context.AfterFunc(sb.ctx, func() { c.Close() })
	defer stop()
	r := bufio.NewReader(c)
	sc := newScratch()
	var in, out []byte
	for {
		_ = c.SetReadDeadline(time.Now().Add(tcpIdle))
		pkt, err := readFrame(r, in)
		if err != nil {
			return
		}
		in = pkt
		reply, ok := sb.answerTCP(out[:0], pkt, sc)
		if !ok {
			return
		}
		out = reply
		_ = c.SetWriteDeadline(time.Now().Add(tcpIdle))
		frame := net.Buffers{{byte(len(reply) >> 8), byte(len(reply))}, reply}
		if _, err := frame.WriteTo(c); err != nil {
			return
		}
	}
}

// answerTCP answers one query; misses are forwarded over TCP on this goroutine.
func (sb *sandbox) answerTCP(out, pkt []byte, sc *scratch) ([]byte, bool) {
	reply, act := sb.handle(out, pkt, maxTCPMessage, sc)
	switch act {
	case actDrop:
		return nil, false
	case actReply:
		return reply, true
	}
	if !sb.acquire() {
		return failure(out, pkt, &sc.q), true
	}
	defer sb.release()
	return sb.resolveReply(out, pkt, &sc.q, maxTCPMessage, true), true
}

// newConfig turns a SandboxConfig into the form queries use, keeping the health
// of upstreams the sandbox already had.
func newConfig(cfg SandboxConfig, old *sbConfig, group uint32) *sbConfig {
	c := &sbConfig{id: cfg.ID, internal: cfg.Internal, group: group}
	for _, s := range cfg.Search {
		if s = strings.ToLower(strings.Trim(s, ".")); s != "" {
			c.search = append(c.search, s)
		}
	}
	for _, a := range normalizeUpstreams(cfg.Upstreams) {
		c.upstreams = append(c.upstreams, findUpstream(old, a))
	}
	for alias, target := range cfg.Links {
		alias, target = strings.ToLower(strings.Trim(alias, ".")), strings.ToLower(strings.Trim(target, "."))
		if alias == "" || target == "" || alias == target {
			continue
		}
		if c.links == nil {
			c.links = map[string][]byte{}
		}
		c.links[alias] = []byte(target)
	}
	return c
}

func findUpstream(old *sbConfig, a netip.AddrPort) *upstream {
	if old != nil {
		for _, u := range old.upstreams {
			if u.addr == a {
				return u
			}
		}
	}
	return &upstream{addr: a}
}

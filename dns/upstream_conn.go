package dns

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/piernet/pier/netns"
)

// nsExchanger opens a fresh socket per upstream query (a new random source port
// each time) on a thread inside the sandbox's namespace, so upstream traffic
// leaves with the sandbox's own routes and firewall, never the host's.
type nsExchanger struct {
	ns *netns.Namespace
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 65535); return &b }}

func (x nsExchanger) exchange(ctx context.Context, up netip.AddrPort, msg []byte, tcp bool, accept func([]byte) bool) ([]byte, error) {
	conn, err := x.dial(ctx, up, tcp)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if tcp {
		return exchangeTCP(conn, msg, accept)
	}
	return exchangeUDP(conn, msg, accept)
}

// dial creates the socket inside the namespace; connecting happens there too
// (a TCP connect blocks that locked thread only, for at most the ctx deadline).
func (x nsExchanger) dial(ctx context.Context, up netip.AddrPort, tcp bool) (net.Conn, error) {
	var conn net.Conn
	err := x.ns.Do(func() error {
		var err error
		if tcp {
			var d net.Dialer
			conn, err = d.DialContext(ctx, "tcp", up.String())
		} else {
			conn, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(up))
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("connecting to upstream %s: %w", up, err)
	}
	return conn, nil
}

// exchangeUDP sends msg and reads until a reply is accepted or the deadline passes.
// A connected UDP socket also reports ICMP unreachables as errors at once.
func exchangeUDP(conn net.Conn, msg []byte, accept func([]byte) bool) ([]byte, error) {
	if _, err := conn.Write(msg); err != nil {
		return nil, err
	}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	for {
		n, err := conn.Read(*bp)
		if err != nil {
			return nil, err
		}
		if accept((*bp)[:n]) {
			return append([]byte(nil), (*bp)[:n]...), nil
		}
	}
}

// exchangeTCP sends msg with its length prefix and reads one reply.
func exchangeTCP(conn net.Conn, msg []byte, accept func([]byte) bool) ([]byte, error) {
	framed := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(msg)), uint16(len(msg)))
	if _, err := conn.Write(append(framed, msg...)); err != nil {
		return nil, err
	}
	reply, err := readFrame(conn, nil)
	if err != nil {
		return nil, err
	}
	if !accept(reply) {
		return nil, errMismatch
	}
	return reply, nil
}

// readFrame reads one length-prefixed DNS message into buf (grown as needed).
func readFrame(r io.Reader, buf []byte) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

package overlay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/piernet/pier/netns"
)

func (k HostKernel) UnderlayIface(ctx context.Context, addr netip.Addr) (string, error) {
	routes, err := k.Host.NL.RouteGet(addr.AsSlice())
	if err != nil || len(routes) == 0 {
		return "", fmt.Errorf("finding the route to %s: %w", addr, err)
	}
	l, err := k.Host.NL.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return "", fmt.Errorf("finding the interface of the route to %s: %w", addr, err)
	}
	return l.Attrs().Name, nil
}

func (k HostKernel) Reach(ctx context.Context, sandboxKey string, dst netip.Addr, tcp bool) error {
	sb, err := netns.OpenHandle(sandboxKey)
	if err != nil {
		return fmt.Errorf("opening sandbox namespace %s: %w", sandboxKey, err)
	}
	defer sb.Close()
	if tcp {
		return sb.Do(func() error { return synAnswered(ctx, dst) })
	}
	var c *icmp.PacketConn
	if err := sb.Do(func() error { c, err = listenICMP(dst); return err }); err != nil {
		return err
	}
	defer c.Close()
	return echoReply(ctx, c, dst)
}

// synAnswered connects to dst: a connection or a refusal (RST) both mean the SYN
// arrived with a valid checksum and the answer came back.
func synAnswered(ctx context.Context, dst netip.Addr) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(dst.String(), strconv.Itoa(probePort)))
	if err == nil {
		return c.Close()
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	return err
}

// listenICMP opens a raw ICMP socket in the calling thread's namespace.
func listenICMP(dst netip.Addr) (*icmp.PacketConn, error) {
	if dst.Is4() {
		return icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	}
	return icmp.ListenPacket("ip6:ipv6-icmp", "::")
}

// echoReply sends an echo request to dst and waits for its reply.
func echoReply(ctx context.Context, c *icmp.PacketConn, dst netip.Addr) error {
	id := os.Getpid() & 0xffff
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("pier tunnel probe")}}
	reply, proto := icmp.Type(ipv4.ICMPTypeEchoReply), 1
	if dst.Is6() {
		msg.Type, reply, proto = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	b, err := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
	if err != nil {
		return err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultProbeWait)
	}
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return fmt.Errorf("sending echo request to %s: %w", dst, err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("waiting for the echo reply of %s: %w", dst, err)
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != reply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && from.String() == dst.String() {
			return nil
		}
	}
}

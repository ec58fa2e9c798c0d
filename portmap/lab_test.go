package portmap_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// lab is a "host" namespace with bridges, containers attached by veths, and
// an "outside" client namespace behind an uplink veth. Addresses come from
// documentation ranges and ULAs.
type lab struct {
	*netlab.Lab
	t       testing.TB
	outside *netns.Namespace
}

const (
	hostV4 = "198.51.100.1" // the host's address on the uplink
	hostV6 = "2001:db8::1"
	outV4  = "198.51.100.2" // the outside client
	outV6  = "2001:db8::2"
)

func newLab(t testing.TB, brNetfilter bool) *lab {
	t.Helper()
	// Hairpin: what the bridge driver must do so that a container can reach
	// its own published port through a host address when br_netfilter
	// bridges the DNAT'd packet back out of its port.
	l := &lab{Lab: netlab.New(t, netlab.Options{IPv6: true, Hairpin: true, BridgeNetfilter: brNetfilter}), t: t}
	l.outside = l.Uplink("uplink", []string{hostV4 + "/24", hostV6 + "/64"}, []string{outV4 + "/24", outV6 + "/64"})
	return l
}

// peer creates a container namespace on bridge master: eth0 with an IPv4
// and an IPv6 prefix, default routes via gw4 and gw6.
func (l *lab) peer(hostSide, master, addr4, addr6, gw4, gw6 string) *netns.Namespace {
	l.t.Helper()
	return l.Peer(hostSide, master, []string{addr4, addr6}, []string{gw4, gw6})
}

// reachable waits until ns reaches every addr over TCP: fresh links need a
// moment for IPv6 neighbour discovery.
func (l *lab) reachable(ns *netns.Namespace, addrs ...string) {
	l.t.Helper()
	for _, a := range addrs {
		eventually(l.t, 5*time.Second, "*", func() string {
			if ask(l.t, ns, "tcp", a) != "" {
				return "*"
			}
			return ""
		})
	}
}

// nft runs the nft binary in the host namespace through nsenter.
func (l *lab) nft(args ...string) {
	l.t.Helper()
	nstest.Require(l.t, "nft", "nsenter")
	out, err := exec.Command("nsenter", append([]string{"--net=" + l.Host.Path, "nft"}, args...)...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("nft %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// serveTCP answers each line on ns's port with "name remoteIP line".
func serveTCP(t *testing.T, ns *netns.Namespace, name string, port int) {
	t.Helper()
	netlab.Serve(t, ns, fmt.Sprintf(":%d", port), func(c net.Conn) { echoLines(c, name) }) // both families
}

func echoLines(c net.Conn, name string) {
	defer c.Close()
	from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if _, err := fmt.Fprintf(c, "%s %s %s\n", name, from, sc.Text()); err != nil {
			return
		}
	}
}

// serveUDP answers each datagram on ns's port with "name remoteIP data".
func serveUDP(t *testing.T, ns *netns.Namespace, name string, port int) {
	t.Helper()
	var pc net.PacketConn
	err := ns.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			src := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
			_, _ = pc.WriteTo(fmt.Appendf(nil, "%s %s %s", name, src, buf[:n]), from)
		}
	}()
}

// ask sends one line (TCP) or datagram (UDP, up to three tries, as UDP
// clients do) from ns to addr and returns the answer, or "" if there was
// none.
func ask(t testing.TB, ns *netns.Namespace, proto, addr string) string {
	t.Helper()
	c, err := netlab.Dial(t, ns, proto, addr, time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	tries := 1
	if proto == "udp" {
		tries = 3
	}
	for range tries {
		if got := roundTrip(c); got != "" {
			return got
		}
	}
	return ""
}

// roundTrip sends "ping" on c and returns the answer without the echo.
func roundTrip(c net.Conn) string { return roundTripWithin(c, 400*time.Millisecond) }

// roundTripWithin is roundTrip with another deadline: a connection that must keep
// working gets more time on a loaded machine.
func roundTripWithin(c net.Conn, d time.Duration) string {
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return ""
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) || n == 0 {
		return ""
	}
	return strings.TrimSuffix(strings.TrimSpace(string(buf[:n])), " ping")
}

// quiesce returns once c has nothing in flight: a pending delayed ACK is sent at once
// (TCP_QUICKACK) and everything c sent is acknowledged (TCP_INFO). The peer's ACK of
// our last data rides on its answer, which roundTrip has read.
func quiesce(t testing.TB, c net.Conn) {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	sockopt := func(fn func(fd int) error) {
		t.Helper()
		var opErr error
		if err := raw.Control(func(fd uintptr) { opErr = fn(int(fd)) }); err != nil || opErr != nil {
			t.Fatalf("socket option: %v %v", err, opErr)
		}
	}
	sockopt(func(fd int) error { return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUICKACK, 1) })
	eventually(t, 5*time.Second, "0", func() string {
		var info *unix.TCPInfo
		sockopt(func(fd int) (err error) {
			info, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
			return err
		})
		return fmt.Sprint(info.Unacked)
	})
}

// eventually polls fn until it returns want or the deadline passes, and
// returns how long that took.
func eventually(t testing.TB, within time.Duration, want string, fn func() string) time.Duration {
	t.Helper()
	var got string
	took, ok := nstest.Poll(within, func() bool { got = fn(); return got == want })
	if !ok {
		t.Fatalf("got %q, want %q within %v", got, want, within)
	}
	return took
}

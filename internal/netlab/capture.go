package netlab

import (
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// Capture reads every frame seen on dev in ns (an AF_PACKET socket, as tcpdump would)
// and hands a copy to fn, on one goroutine, until the returned stop function is
// called. stop waits for that goroutine, so fn's results can be read after it; it is
// idempotent and also runs at cleanup.
func Capture(t testing.TB, ns *netns.Namespace, dev string, fn func(frame []byte)) (stop func()) {
	t.Helper()
	var fd int
	var err error
	nstest.Do(t, ns.Handle, func() { fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL))) })
	if err != nil {
		t.Fatalf("capture socket: %v", err)
	}
	l, err := ns.NL.LinkByName(dev)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: l.Attrs().Index})
	}
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err == nil {
		err = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	}
	if err != nil {
		unix.Close(fd)
		t.Fatalf("capturing on %s: %v", dev, err)
	}
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			select {
			case <-quit:
				return
			default:
			}
			if n, _, err := unix.Recvfrom(fd, buf, 0); err == nil {
				fn(append([]byte(nil), buf[:n]...))
			}
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			close(quit)
			<-done
			unix.Close(fd)
		})
	}
	t.Cleanup(stop)
	return stop
}

// IPv4 is the outer header of an Ethernet/IPv4 frame: addresses, protocol and the
// payload after the IP header; ok is false for anything else.
func IPv4(f []byte) (src, dst [4]byte, proto byte, payload []byte, ok bool) {
	if len(f) < 14+20 || binary.BigEndian.Uint16(f[12:14]) != unix.ETH_P_IP {
		return src, dst, 0, nil, false
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ihl < 20 || len(ip) < ihl {
		return src, dst, 0, nil, false
	}
	copy(src[:], ip[12:16])
	copy(dst[:], ip[16:20])
	return src, dst, ip[9], ip[ihl:], true
}

// VXLAN parses an Ethernet/IPv4/UDP frame to UDP port: the VNI of its VXLAN header
// (RFC 7348, I flag set) and the encapsulated Ethernet frame.
func VXLAN(f []byte, port uint16) (vni uint32, inner []byte, ok bool) {
	_, _, proto, udp, ok := IPv4(f)
	if !ok || proto != unix.IPPROTO_UDP || len(udp) < 8+8 || binary.BigEndian.Uint16(udp[2:4]) != port {
		return 0, nil, false
	}
	vx := udp[8:]
	if vx[0]&0x08 == 0 {
		return 0, nil, false
	}
	return binary.BigEndian.Uint32(vx[4:8]) >> 8, vx[8:], true
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

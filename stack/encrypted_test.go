package stack

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/netns"
)

// wire counts what a capture on the underlay saw: VXLAN frames by VNI, WireGuard
// datagrams, and frames holding a marker.
type wire struct {
	mu     sync.Mutex
	vni    map[uint32]int
	wg     int
	marked int
}

func (w *wire) saw(marker []byte) func([]byte) {
	return func(f []byte) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if bytes.Contains(f, marker) {
			w.marked++
		}
		if vni, _, ok := netlab.VXLAN(f, 4789); ok {
			w.vni[vni]++
		}
		if _, _, proto, udp, ok := netlab.IPv4(f); ok && proto == unix.IPPROTO_UDP && len(udp) >= 4 && binary.BigEndian.Uint16(udp[2:4]) == 51820 {
			w.wg++
		}
	}
}

// sendMarked connects from the namespace at key to addr:7777 (an echo server) and
// sends size bytes of marker-laden data, checking the echo byte for byte.
func sendMarked(key string, addr netip.Addr, marker []byte, size int) error {
	c, err := dialIn(key, netip.AddrPortFrom(addr, 7777), 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	data := bytes.Repeat(marker, size/len(marker))
	errc := make(chan error, 1)
	go func() { _, err := c.Write(data); errc <- err }()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return io.ErrUnexpectedEOF
	}
	return <-errc
}

// An encrypted overlay (-o encrypted) between two clustered hosts: a 1 MiB TCP echo
// crosses it, and on the underlay its traffic is only WireGuard — no VXLAN frame of
// its VNI, no byte of the payload in cleartext — while a plain overlay beside it is
// VXLAN as before. With the WireGuard device gone (a crash of pierd takes the
// userspace device with it), the encrypted network's traffic stops: nothing leaves in
// cleartext.
func TestEncryptedOverlayAcrossClusterHosts(t *testing.T) {
	l := newClusterLab(t, 2)
	h1, h2 := l.hosts[0], l.hosts[1]
	sec := h1.network(cnm.NetworkSpec{Name: "sec", Driver: "overlay", Attachable: true, Options: map[string]string{"encrypted": ""}})
	plain := h1.network(cnm.NetworkSpec{Name: "plain", Driver: "overlay", Attachable: true})
	waitNetwork(t, h2, "sec")
	waitNetwork(t, h2, "plain")
	a := h1.sandbox("a", "sec", "plain")
	h2.sandbox("b", "sec", "plain")
	listen(t, h2.sandboxKey("b"))
	bSec, bPlain := h2.addr("b", "sec", false), h2.addr("b", "plain", false)
	if mtu := linkMTU(t, a.Key, sec); mtu != 1500-50-60 {
		t.Errorf("the encrypted network's MTU in the sandbox is %d, want 1390 (VXLAN and WireGuard)", mtu)
	}
	lab, err := netns.Open(l.lab)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()

	marker := make([]byte, 16)
	_, _ = rand.Read(marker)
	w := &wire{vni: map[uint32]int{}}
	stop := netlab.Capture(t, lab, "lab-h2", w.saw(marker))
	if err := within(10*time.Second, func() error { return sendMarked(a.Key, bSec, marker, 1<<20) }); err != nil {
		stop()
		t.Fatalf("1 MiB across the encrypted overlay: %v", err)
	}
	stop()
	t.Logf("encrypted: %d WireGuard datagrams, VXLAN by VNI %v, %d frames with the marker", w.wg, w.vni, w.marked)
	if w.vni[sec.VNIs[0]] > 0 || w.marked > 0 || w.wg == 0 {
		t.Fatalf("the encrypted overlay on the wire: %d VXLAN frames of its VNI %d, %d frames with the payload in cleartext, %d WireGuard datagrams",
			w.vni[sec.VNIs[0]], sec.VNIs[0], w.marked, w.wg)
	}

	// The plain overlay beside it, for contrast: VXLAN with the payload readable.
	w = &wire{vni: map[uint32]int{}}
	stop = netlab.Capture(t, lab, "lab-h2", w.saw(marker))
	if err := within(5*time.Second, func() error { return sendMarked(a.Key, bPlain, marker, 64<<10) }); err != nil {
		stop()
		t.Fatal(err)
	}
	stop()
	if w.vni[plain.VNIs[0]] == 0 || w.marked == 0 {
		t.Fatalf("the plain overlay on the wire: %d VXLAN frames of VNI %d, %d with the marker (the capture sees nothing?)", w.vni[plain.VNIs[0]], plain.VNIs[0], w.marked)
	}

	// Fail closed: the WireGuard device of host 1 disappears.
	tun, err := netns.Open(h1.opts.ExecRoot + "/wireguard/netns")
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	dev, err := tun.NL.LinkByName("pierwg0")
	if err != nil {
		t.Fatal(err)
	}
	if err := tun.NL.LinkDel(dev); err != nil {
		t.Fatal(err)
	}
	w = &wire{vni: map[uint32]int{}}
	stop = netlab.Capture(t, lab, "lab-h1", w.saw(marker))
	err = sendMarked(a.Key, bSec, marker, 64<<10)
	time.Sleep(200 * time.Millisecond)
	stop()
	if err == nil || w.vni[sec.VNIs[0]] > 0 || w.marked > 0 {
		t.Fatalf("with host 1's WireGuard device gone: send %v; on the wire %d VXLAN frames of the encrypted VNI, %d with the marker", err, w.vni[sec.VNIs[0]], w.marked)
	}
	t.Logf("device gone: the send failed (%v); nothing of it on the wire", err)
}

// linkMTU is the MTU of the sandbox's interface on network n.
func linkMTU(t *testing.T, key string, n cnm.Network) int {
	t.Helper()
	ns, err := netns.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	links, err := ns.NL.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]bool{}
	for _, p := range n.IPv4 {
		addrs[p.Subnet.String()] = true
	}
	for _, l := range links {
		as, _ := ns.NL.AddrList(l, netlink.FAMILY_V4)
		for _, a := range as {
			if p, ok := netip.AddrFromSlice(a.IP); ok && n.IPv4[0].Subnet.Contains(p.Unmap()) {
				return l.Attrs().MTU
			}
		}
	}
	t.Fatalf("no interface on %s", n.Name)
	return 0
}

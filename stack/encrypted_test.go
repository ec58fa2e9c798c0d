package stack

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
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
// VXLAN as before. With the WireGuard device gone (deleted by hand), the encrypted
// network's traffic stops — nothing leaves in cleartext — until pierd re-creates it.
func TestEncryptedOverlayAcrossClusterHosts(t *testing.T) {
	l, sec, plain, a := secAndPlain(t)
	h1, h2 := l.hosts[0], l.hosts[1]
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
	c, err := dialIn(a.Key, netip.AddrPortFrom(bSec, 7777), 300*time.Millisecond)
	if err == nil {
		c.Close()
	}
	time.Sleep(100 * time.Millisecond)
	stop()
	if err == nil || w.vni[sec.VNIs[0]] > 0 {
		t.Fatalf("with host 1's WireGuard device gone: dial %v; on the wire %d VXLAN frames of the encrypted VNI", err, w.vni[sec.VNIs[0]])
	}
	t.Logf("device gone: the connection failed (%v); nothing of it on the wire", err)

	// pierd notices and re-creates the device (same key, same peers): traffic flows
	// again, still only as WireGuard.
	w = &wire{vni: map[uint32]int{}}
	stop = netlab.Capture(t, lab, "lab-h1", w.saw(marker))
	err = within(10*time.Second, func() error { return sendMarked(a.Key, bSec, marker, 64<<10) })
	stop()
	if err != nil || w.vni[sec.VNIs[0]] > 0 || w.marked > 0 {
		t.Fatalf("after the device came back: send %v; %d VXLAN frames of the encrypted VNI, %d with the marker", err, w.vni[sec.VNIs[0]], w.marked)
	}
}

// secAndPlain builds two clustered hosts with an encrypted overlay "sec" and a plain
// one "plain", sandbox a on host 1 and b on host 2 on both, b echoing on :7777.
func secAndPlain(t *testing.T) (l *clusterLab, sec, plain cnm.Network, a cnm.Sandbox) {
	t.Helper()
	l = newClusterLab(t, 2)
	h1, h2 := l.hosts[0], l.hosts[1]
	sec = h1.network(cnm.NetworkSpec{Name: "sec", Driver: "overlay", Attachable: true, Options: map[string]string{"encrypted": ""}})
	plain = h1.network(cnm.NetworkSpec{Name: "plain", Driver: "overlay", Attachable: true})
	waitNetwork(t, h2, "sec")
	waitNetwork(t, h2, "plain")
	a = h1.sandbox("a", "sec", "plain")
	h2.sandbox("b", "sec", "plain")
	listen(t, h2.sandboxKey("b"))
	return l, sec, plain, a
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

// udpCounter receives sequence-numbered datagrams on :9000 in the namespace at key.
type udpCounter struct {
	mu   sync.Mutex
	seen map[uint32]bool
}

func countUDP(t *testing.T, key string) *udpCounter {
	t.Helper()
	ns, err := netns.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	u := &udpCounter{seen: map[uint32]bool{}}
	netlab.ServeUDP(t, ns, ":9000", func(_ net.Addr, b []byte) []byte {
		if len(b) >= 4 {
			u.mu.Lock()
			u.seen[binary.BigEndian.Uint32(b)] = true
			u.mu.Unlock()
		}
		return nil
	})
	return u
}

// flows runs, from the namespace at key, a TCP echo stream to addr:7777 and a UDP
// flow (one datagram every 5 ms) to addr:9000 until stop closes; it returns the TCP
// error (nil: no reset, no loss, every byte echoed) and how many datagrams it sent.
func flows(t *testing.T, key string, addr netip.Addr, withTCP bool, stop <-chan struct{}) (tcpErr func() error, sent func() uint32) {
	t.Helper()
	c, err := dialIn(key, netip.AddrPortFrom(addr, 7777), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	var u net.Conn
	if err := ns.Do(func() (err error) { u, err = net.Dial("udp4", netip.AddrPortFrom(addr, 9000).String()); return }); err != nil {
		t.Fatal(err)
	}
	ns.Close()
	var wg sync.WaitGroup
	var terr error
	var n uint32
	wg.Go(func() {
		defer c.Close()
		if !withTCP {
			return
		}
		buf, got := make([]byte, 4096), make([]byte, 4096)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			for j := range buf {
				buf[j] = byte(i + j)
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(buf); err != nil {
				terr = err
				return
			}
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(buf, got) {
				terr = fmt.Errorf("echo %d: %v (equal %v)", i, err, bytes.Equal(buf, got))
				return
			}
		}
	})
	wg.Go(func() {
		defer u.Close()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			_, _ = u.Write(binary.BigEndian.AppendUint32(nil, n))
			n++
		}
	})
	return func() error { wg.Wait(); return terr }, func() uint32 { wg.Wait(); return n }
}

// Key rotation under load: 20 rotations — ten alternately of host 2's and host 1's
// key, then five rounds in which both start one at the same moment (the cluster-wide
// lock makes them take turns) — while a TCP echo stream crosses the encrypted overlay
// from host 1 to host 2 and a UDP flow runs each way. TCP sees no error and every
// byte comes back; no datagram is lost beyond what the same flows lose without
// rotations; each rotation is complete (every other host acknowledged the new key and
// has a session under it) well within 2 s.
func TestEncryptedOverlayKeyRotationUnderLoad(t *testing.T) {
	l := newClusterLab(t, 3)
	h1, h2 := l.hosts[0], l.hosts[1]
	h1.network(cnm.NetworkSpec{Name: "sec", Driver: "overlay", Attachable: true, Options: map[string]string{"encrypted": "true"}})
	waitNetwork(t, h2, "sec")
	a := h1.sandbox("a", "sec")
	h2.sandbox("b", "sec")
	bKey := h2.sandboxKey("b")
	listen(t, bKey)
	listen(t, a.Key)
	b, aAddr := h2.addr("b", "sec", false), h1.addr("a", "sec", false)
	if err := within(10*time.Second, func() error { return dialEcho(a.Key, b, time.Second) }); err != nil {
		t.Fatal(err)
	}
	atB, atA := countUDP(t, bKey), countUDP(t, a.Key)
	lost := func(recv *udpCounter, sent uint32) int {
		recv.mu.Lock()
		defer recv.mu.Unlock()
		var seqs []uint32
		for i := range sent {
			if !recv.seen[i] {
				seqs = append(seqs, i)
			}
		}
		clear(recv.seen)
		if len(seqs) > 0 {
			t.Logf("lost datagrams (a datagram every 5 ms): %v", seqs[:min(len(seqs), 20)])
		}
		return len(seqs)
	}
	type outcome struct {
		tcp            error
		lostAB, lostBA int
		sentAB, sentBA uint32
		took           []time.Duration
	}
	rotate := func(h *env) time.Duration {
		r, err := h.s.RotateKey(t.Context())
		if err != nil || len(r.Missing)+len(r.NoSession) > 0 {
			t.Errorf("rotation of %s: %+v, %v", h.s.cluster.Self().Name, r, err)
		}
		return r.Took
	}
	run := func(rotations bool) outcome {
		stop := make(chan struct{})
		tcpErr, sentAB := flows(t, a.Key, b, true, stop)
		_, sentBA := flows(t, bKey, aAddr, false, stop)
		time.Sleep(300 * time.Millisecond)
		var o outcome
		if !rotations {
			time.Sleep(3 * time.Second)
		}
		for i := range 10 {
			if !rotations {
				break
			}
			o.took = append(o.took, rotate([]*env{h2, h1}[i%2]))
			time.Sleep(50 * time.Millisecond) // old sessions' traffic in flight meets the new key
		}
		for range 5 {
			if !rotations {
				break
			}
			var mu sync.Mutex
			var wg sync.WaitGroup
			for _, h := range []*env{h1, h2} {
				wg.Go(func() {
					d := rotate(h)
					mu.Lock()
					o.took = append(o.took, d)
					mu.Unlock()
				})
			}
			wg.Wait()
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		close(stop)
		o.tcp = tcpErr()
		o.sentAB, o.sentBA = sentAB(), sentBA()
		time.Sleep(200 * time.Millisecond) // the last datagrams in flight
		o.lostAB, o.lostBA = lost(atB, o.sentAB), lost(atA, o.sentBA)
		return o
	}
	base := run(false)
	if base.tcp != nil {
		t.Fatalf("TCP without rotations: %v", base.tcp)
	}
	rot := run(true)
	slices.Sort(rot.took)
	t.Logf("UDP datagrams lost host 1 → 2 / 2 → 1: without rotations %d of %d / %d of %d; across 20 rotations %d of %d / %d of %d; TCP %v; a rotation took p50 %v, max %v (every other node acknowledged and shook hands)",
		base.lostAB, base.sentAB, base.lostBA, base.sentBA, rot.lostAB, rot.sentAB, rot.lostBA, rot.sentBA, rot.tcp, rot.took[len(rot.took)/2], rot.took[len(rot.took)-1])
	if rot.tcp != nil {
		t.Fatalf("TCP across 20 rotations: %v", rot.tcp)
	}
	// 0 lost in every run so far, with and without -race; with switch delays of
	// 20-30 ms, and debug logging of the three devices, about one run in four lost
	// one datagram (cause not found; docs/overlay.md). One is tolerated so that CI's
	// load does not fail the suite; before the rotation lock, the early handshake and
	// the delayed switch, 15 to 52 were lost.
	if rot.lostAB+rot.lostBA > base.lostAB+base.lostBA+1 {
		t.Errorf("rotations lost datagrams: %d and %d, against %d and %d without rotations", rot.lostAB, rot.lostBA, base.lostAB, base.lostBA)
	}
	for _, d := range rot.took {
		if d > 2*time.Second {
			t.Errorf("a rotation took %v to complete (goal 2 s)", d)
		}
	}
}

// --cluster-key-rotation: each node rotates its key by itself, and the encrypted
// overlay keeps carrying new connections across the rotations.
func TestEncryptedOverlayPeriodicRotation(t *testing.T) {
	l := newClusterLab(t, 2, func(o *ClusterOptions) { o.KeyRotation = 300 * time.Millisecond })
	h1, h2 := l.hosts[0], l.hosts[1]
	h1.network(cnm.NetworkSpec{Name: "sec", Driver: "overlay", Attachable: true, Options: map[string]string{"encrypted": ""}})
	waitNetwork(t, h2, "sec")
	a := h1.sandbox("a", "sec")
	h2.sandbox("b", "sec")
	listen(t, h2.sandboxKey("b"))
	b := h2.addr("b", "sec", false)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if err := within(3*time.Second, func() error { return dialEcho(a.Key, b, time.Second) }); err != nil {
			t.Fatalf("a connection during periodic rotations: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, h := range []*env{h1, h2} {
		if gen := h.s.cluster.Self().WGGen; gen < 3 {
			t.Errorf("%s rotated its key %d times in 3 s at a 300 ms period", h.s.cluster.Self().Name, gen)
		}
	}
}

// forgedVXLAN builds a VXLAN datagram's payload for vni carrying an Ethernet frame to
// dstMAC with an IPv4/UDP packet from 192.0.2.254:40000 to dst:port holding data.
func forgedVXLAN(vni uint32, dstMAC net.HardwareAddr, dst netip.Addr, port uint16, data []byte) []byte {
	udp := binary.BigEndian.AppendUint16(nil, 40000)
	udp = binary.BigEndian.AppendUint16(udp, port)
	udp = binary.BigEndian.AppendUint16(udp, uint16(8+len(data)))
	udp = append(binary.BigEndian.AppendUint16(udp, 0), data...) // checksum 0: none (IPv4)
	ip := []byte{0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, unix.IPPROTO_UDP, 0, 0, 192, 0, 2, 254}
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	ip = append(ip, dst.AsSlice()...)
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	frame := append(append(append([]byte{}, dstMAC...), 0x02, 0x42, 0xde, 0xad, 0xbe, 0xef, 0x08, 0x00), append(ip, udp...)...)
	hdr := []byte{0x08, 0, 0, 0}
	return append(append(hdr, binary.BigEndian.AppendUint32(nil, vni<<8)...), frame...)
}

// endpointMAC is the MAC of sandbox sb's endpoint on network net.
func (e *env) endpointMAC(sb, net string) net.HardwareAddr {
	e.t.Helper()
	eps, err := e.s.Controller.SandboxEndpoints(e.t.Context(), sb)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, ep := range eps {
		if n, _ := e.s.Controller.Network(e.t.Context(), ep.NetworkID); n.Name == net {
			mac, err := parseMAC(ep.MAC)
			if err != nil {
				e.t.Fatal(err)
			}
			return mac
		}
	}
	e.t.Fatalf("%s is not on %s", sb, net)
	return nil
}

func parseMAC(s string) (net.HardwareAddr, error) { return net.ParseMAC(s) }

// Fail closed on the way in and after a flush: a cleartext VXLAN datagram for the
// encrypted network's VNI, forged on the underlay and sent to host 2, is not
// delivered to the sandbox it is addressed to — while the same forgery for a plain
// overlay's VNI is (the positive control: the forgery itself works). And `nft flush
// ruleset` on both hosts changes nothing: the encrypted network's traffic still
// leaves only through WireGuard.
func TestEncryptedOverlayRefusesCleartext(t *testing.T) {
	l, sec, plain, a := secAndPlain(t)
	h1, h2 := l.hosts[0], l.hosts[1]
	recv := countUDP(t, h2.sandboxKey("b"))
	bSec, bPlain := h2.addr("b", "sec", false), h2.addr("b", "plain", false)
	lab, err := netns.Open(l.lab)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	out, err := netns.Open(l.outsider(t))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	forge := func(vni uint32, mac net.HardwareAddr, dst netip.Addr, seq uint32) {
		t.Helper()
		var c net.Conn
		if err := out.Do(func() (err error) { c, err = net.Dial("udp4", "192.0.2.2:4789"); return }); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(forgedVXLAN(vni, mac, dst, 9000, binary.BigEndian.AppendUint32(nil, seq))); err != nil {
			t.Fatal(err)
		}
	}
	got := func(seq uint32) bool {
		recv.mu.Lock()
		defer recv.mu.Unlock()
		return recv.seen[seq]
	}
	// The positive control first: a forged frame for the plain overlay gets in.
	if _, ok := nstest.Poll(3*time.Second, func() bool { forge(plain.VNIs[0], h2.endpointMAC("b", "plain"), bPlain, 1); return got(1) }); !ok {
		t.Fatal("a forged VXLAN datagram for the plain overlay was not delivered either: the forgery does not work, the test proves nothing")
	}
	for i := range 20 {
		forge(sec.VNIs[0], h2.endpointMAC("b", "sec"), bSec, uint32(100+i))
	}
	time.Sleep(300 * time.Millisecond)
	for i := range 20 {
		if got(uint32(100 + i)) {
			t.Fatalf("a forged cleartext VXLAN datagram for the encrypted VNI %d reached the sandbox", sec.VNIs[0])
		}
	}

	// nft flush ruleset on both hosts: encryption does not depend on a rule.
	for _, h := range []*env{h1, h2} {
		if err := exec.Command("nsenter", "--net="+h.hostPath, "nft", "flush", "ruleset").Run(); err != nil {
			t.Fatal(err)
		}
	}
	marker := make([]byte, 16)
	_, _ = rand.Read(marker)
	w := &wire{vni: map[uint32]int{}}
	stop := netlab.Capture(t, lab, "lab-h1", w.saw(marker))
	err = within(15*time.Second, func() error { return sendMarked(a.Key, bSec, marker, 256<<10) })
	stop()
	if err != nil || w.vni[sec.VNIs[0]] > 0 || w.marked > 0 || w.wg == 0 {
		t.Fatalf("after nft flush ruleset: send %v; %d VXLAN frames of the encrypted VNI, %d with the marker, %d WireGuard datagrams", err, w.vni[sec.VNIs[0]], w.marked, w.wg)
	}
}

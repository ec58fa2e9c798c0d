package stack

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/lb"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/wg"
)

// Benchmarks of the routing mesh (issue 13) and of encrypted overlays (issue 11).
// Each measures its paths interleaved, round by round, next to baselines on the same
// hosts, and reports medians and ratios; none asserts a time.

const streamBytes = 64 << 20 // one TCP stream per path and iteration

// benchPath is a way to a server: the namespace the client runs in and the address.
type benchPath struct {
	name string
	from *netns.Namespace
	to   netip.AddrPort
}

// request is one TCP connect, a request line, its answer line and the close, run
// inside the client's namespace; it returns the time from dial to close.
func (p benchPath) request(timeout time.Duration) (d time.Duration, err error) {
	nerr := p.from.Do(func() error {
		start := time.Now()
		c, derr := net.DialTimeout("tcp4", p.to.String(), timeout)
		if derr != nil {
			err = derr
			return nil
		}
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err = c.Write([]byte("ping\n")); err == nil {
			_, err = bufio.NewReader(c).ReadString('\n')
		}
		c.Close()
		d = time.Since(start)
		return nil
	})
	return d, errors.Join(nerr, err)
}

// wait polls the path (a line server) until it answers, for up to 30 s, and logs
// how long a path took that needed more than a second. (WireGuard paths, pier's and
// the hand-built pair alike, now and then answer only after 10 s on a loaded machine.)
func (p benchPath) wait(b *testing.B) {
	b.Helper()
	if took := nstest.Eventually(b, p.name+" path to answer", 30*time.Second, func() bool {
		_, err := p.request(200 * time.Millisecond)
		return err == nil
	}); took > time.Second {
		b.Logf("the %s path (%v) answered after %v", p.name, p.to, took.Round(time.Millisecond))
	}
}

// stream writes streamBytes over one TCP connection to a sink and waits for the
// sink's byte after EOF; it returns the time from dial to that byte.
func (p benchPath) stream(buf []byte) (d time.Duration, err error) {
	nerr := p.from.Do(func() error {
		start := time.Now()
		c, derr := net.DialTimeout("tcp4", p.to.String(), 5*time.Second)
		if derr != nil {
			err = derr
			return nil
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(60 * time.Second))
		for sent := 0; sent < streamBytes && err == nil; sent += len(buf) {
			_, err = c.Write(buf)
		}
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		if err == nil {
			_, err = io.ReadFull(c, make([]byte, 1))
		}
		d = time.Since(start)
		return nil
	})
	return d, errors.Join(nerr, err)
}

// serveBench runs, in ns, a line server on addr:line (one answer line per request
// line) and a sink on addr:sink (reads and discards, one byte after EOF). addr may be
// empty (every address). stop closes both; the test's end does too.
func serveBench(t testing.TB, ns *netns.Namespace, addr string, line, sink uint16) (stop func()) {
	t.Helper()
	var lns []net.Listener
	nstest.Do(t, ns.Handle, func() {
		for _, port := range []uint16{line, sink} {
			ln, err := net.Listen("tcp4", net.JoinHostPort(addr, fmt.Sprint(port)))
			if err != nil {
				t.Errorf("listening on %s:%d: %v", addr, port, err)
				return
			}
			lns = append(lns, ln)
		}
	})
	stop = func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}
	t.Cleanup(stop)
	if len(lns) != 2 {
		t.FailNow()
	}
	handle := []func(net.Conn){
		func(c net.Conn) {
			r := bufio.NewReader(c)
			for {
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				if _, err := c.Write([]byte("pong\n")); err != nil {
					return
				}
			}
		},
		func(c net.Conn) { _, _ = io.Copy(io.Discard, c); _, _ = c.Write([]byte{1}) },
	}
	for i, ln := range lns {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); handle[i](c) }()
			}
		}()
	}
	return stop
}

func openNS(t testing.TB, path string) *netns.Namespace {
	t.Helper()
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// hostAddr is test host i's (0-based) underlay address and port.
func hostAddr(i int, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), port)
}

// latencyRounds measures rounds requests on every path, interleaved, and reports
// each path's median in µs; it returns the medians by name.
func latencyRounds(b *testing.B, paths []benchPath, rounds int) map[string]float64 {
	lat := map[string][]time.Duration{}
	for b.Loop() {
		for range rounds {
			for _, p := range paths {
				d, err := p.request(2 * time.Second)
				if err != nil {
					b.Fatalf("%s (%v): %v", p.name, p.to, err)
				}
				lat[p.name] = append(lat[p.name], d)
			}
		}
	}
	med := map[string]float64{}
	for _, p := range paths {
		med[p.name] = float64(median(lat[p.name]).Nanoseconds()) / 1e3
		b.ReportMetric(med[p.name], p.name+"-µs")
	}
	return med
}

// throughputRounds sends, per iteration, rounds streams per path, one per path in
// turn, the order rotating, and reports each path's Gbit/s (all its bytes over all
// its time); it returns them.
func throughputRounds(b *testing.B, paths []benchPath, rounds int) map[string]float64 {
	buf := make([]byte, 256<<10)
	took := map[string]time.Duration{}
	n := 0
	for b.Loop() {
		for range rounds {
			for j := range paths {
				p := paths[(n+j)%len(paths)]
				d, err := p.stream(buf)
				if err != nil {
					b.Fatalf("%s (%v): %v", p.name, p.to, err)
				}
				took[p.name] += d
			}
			n++
		}
	}
	gbit := map[string]float64{}
	for _, p := range paths {
		gbit[p.name] = float64(n) * streamBytes * 8 / took[p.name].Seconds() / 1e9
		b.ReportMetric(gbit[p.name], p.name+"-Gbit/s")
	}
	return gbit
}

// BenchmarkIngressMesh: three clustered hosts, a client ("outsider", 192.0.2.254) on
// their LAN, and a service "web" publishing 8080:80 (a line server) and 8081:81 (a
// sink) with one task, t2, on host 2. Paths:
//
//   - local: outsider → host 2:8080 (the mesh DNATs to its own task);
//   - remote: outsider → host 1:8080 (no task there: DNAT, then the ingress overlay
//     to host 2);
//   - direct (the baseline): host 2's own namespace → t2's ingress address:80, the
//     task's socket with no mesh and no outside hop (the outsider has no route to
//     the ingress network);
//   - direct-overlay: host 1's namespace → t2's ingress address:80 (across the
//     overlay, no mesh);
//   - lan: outsider → a server in host 2's own namespace (192.0.2.2), the LAN hop
//     alone.
//
// latency: one connect + request line + answer line + close, median µs per path (100
// rounds per iteration); throughput: 64 MiB TCP streams into the sink, four per path
// and iteration; setup: from
// CreateService (on host 1, --publish 9090:80) with one task created on host 2 as
// soon as host 2 knows the service, until 9090 answers on all three hosts (1 ms
// polls), then the task and the service are removed (untimed) until 9090 is closed
// everywhere.
func BenchmarkIngressMesh(b *testing.B) {
	l := newClusterLab(b, 3)
	hosts := l.hosts
	ctx := b.Context()
	out := openNS(b, l.outsider(b))
	hns := []*netns.Namespace{openNS(b, hosts[0].hostPath), openNS(b, hosts[1].hostPath)}
	hosts[0].network(cnm.NetworkSpec{Name: "ov", Driver: "overlay"})
	hosts[0].service(cnm.ServiceSpec{Name: "web", Networks: []string{"ov"}, Ports: []lb.Port{{Proto: "tcp", Port: 80}, {Proto: "tcp", Port: 81}},
		Publish: []cnm.PublishPort{{Mode: cnm.PublishIngress, Proto: "tcp", Published: 8080, Target: 80},
			{Mode: cnm.PublishIngress, Proto: "tcp", Published: 8081, Target: 81}}})
	nstest.Eventually(b, "the service on host 2", 10*time.Second, func() bool { _, err := hosts[1].s.Controller.Service(ctx, "web"); return err == nil })
	t2, err := hosts[1].s.Controller.CreateSandbox(ctx, cnm.SandboxSpec{Name: "t2", Service: "web"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { removeService(b, hosts, t2, "web") }) // before the lab's: the routers leave with the service
	serveBench(b, openNS(b, t2.Key), "", 80, 81)
	serveBench(b, hns[1], "192.0.2.2", 9080, 9081)
	task := hosts[1].addr("t2", cnm.IngressNetworkName, false)
	paths := func(line bool) []benchPath {
		p := [3]uint16{8081, 81, 9081} // mesh, task, lan: the sinks
		if line {
			p = [3]uint16{8080, 80, 9080}
		}
		return []benchPath{
			{"local", out, hostAddr(1, p[0])},
			{"remote", out, hostAddr(0, p[0])},
			{"direct", hns[1], netip.AddrPortFrom(task, p[1])},
			{"direct-overlay", hns[0], netip.AddrPortFrom(task, p[1])},
			{"lan", out, hostAddr(1, p[2])},
		}
	}
	for _, p := range paths(true) {
		p.wait(b)
	}

	b.Run("latency", func(b *testing.B) {
		m := latencyRounds(b, paths(true), 100)
		b.ReportMetric(m["local"]/m["direct"], "local/direct")
		b.ReportMetric(m["remote"]/m["direct"], "remote/direct")
		b.ReportMetric(m["remote"]/m["direct-overlay"], "remote/direct-overlay")
	})
	b.Run("throughput", func(b *testing.B) {
		g := throughputRounds(b, paths(false), 4)
		b.ReportMetric(g["local"]/g["direct"], "local/direct")
		b.ReportMetric(g["remote"]/g["direct"], "remote/direct")
		b.ReportMetric(g["remote"]/g["direct-overlay"], "remote/direct-overlay")
	})
	b.Run("setup", func(b *testing.B) {
		var setup, create []time.Duration
		i := 0
		for b.Loop() {
			name := fmt.Sprintf("pub%d", i)
			i++
			start := time.Now()
			if _, err := hosts[0].s.Controller.CreateService(ctx, cnm.ServiceSpec{Name: name, Networks: []string{"ov"},
				Ports: []lb.Port{{Proto: "tcp", Port: 80}}, Publish: []cnm.PublishPort{{Mode: cnm.PublishIngress, Proto: "tcp", Published: 9090, Target: 80}}}); err != nil {
				b.Fatal(err)
			}
			create = append(create, time.Since(start))
			var sb cnm.Sandbox
			pollFast(b, "the service on host 2", func() bool {
				var err error
				sb, err = hosts[1].s.Controller.CreateSandbox(ctx, cnm.SandboxSpec{Name: name + "-t", Service: name})
				return err == nil
			})
			stop := serveBench(b, openNS(b, sb.Key), "", 80, 81)
			answered := map[int]bool{}
			pollFast(b, "9090 on every host", func() bool {
				for h := range hosts {
					if !answered[h] {
						_, err := benchPath{"", out, hostAddr(h, 9090)}.request(100 * time.Millisecond)
						answered[h] = err == nil
					}
				}
				return answered[0] && answered[1] && answered[2]
			})
			setup = append(setup, time.Since(start))

			stop()
			removeService(b, hosts, sb, name)
			for h := range hosts {
				nstest.Eventually(b, fmt.Sprintf("9090 closed on host %d", h+1), 10*time.Second, func() bool {
					_, err := benchPath{"", out, hostAddr(h, 9090)}.request(100 * time.Millisecond)
					return errors.Is(err, syscall.ECONNREFUSED)
				})
			}
		}
		b.ReportMetric(float64(median(setup).Microseconds())/1e3, "setup-ms")
		b.ReportMetric(float64(slices.Max(setup).Microseconds())/1e3, "setup-max-ms")
		b.ReportMetric(float64(median(create).Microseconds())/1e3, "create-ms")
	})
}

// removeService deletes task (on host 2), waits until host 1 no longer lists it, and
// deletes the service.
func removeService(t testing.TB, hosts []*env, task cnm.Sandbox, name string) {
	ctx := context.Background()
	if err := hosts[1].s.Controller.DeleteSandbox(ctx, task.ID, true); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "host 1 to see no task of "+name, 10*time.Second, func() bool {
		s, err := hosts[0].s.Controller.Service(ctx, name)
		return err == nil && len(hosts[0].s.Controller.RemoteTasks(ctx, s)) == 0
	})
	if err := hosts[0].s.Controller.DeleteService(ctx, name); err != nil {
		t.Fatal(err)
	}
}

// pollFast polls cond every millisecond for up to 10 s.
func pollFast(b *testing.B, what string, cond func() bool) {
	b.Helper()
	if _, ok := nstest.Poll(time.Second, cond); ok { // 1 ms interval
		return
	}
	nstest.Eventually(b, what, 9*time.Second, cond)
}

// BenchmarkEncryptedOverlay/throughput: two clustered hosts, sandbox a on host 1 and
// b on host 2, both on an encrypted overlay ("sec", -o encrypted: VXLAN inside pier's
// userspace WireGuard) and on a plain overlay ("plain") beside it. One 64 MiB TCP
// stream per path and iteration from a into a sink in b over each, and, as the
// baseline, the same stream between the two hosts' own namespaces through a
// wireguard-go pair built by hand (rawWireguardGo, TUN and sockets in those
// namespaces, no VXLAN, no pier code), and over their bare underlay.
//
// BenchmarkEncryptedOverlay/rotation: three hosts, each with a sandbox on an
// encrypted overlay; ten key rotations per iteration, host by host, each until every
// other node acknowledged the new key (Rotation.Took); median and max.
func BenchmarkEncryptedOverlay(b *testing.B) {
	b.Run("throughput", func(b *testing.B) {
		l := newClusterLab(b, 2)
		h1, h2 := l.hosts[0], l.hosts[1]
		h1.network(cnm.NetworkSpec{Name: "sec", Driver: "overlay", Attachable: true, Options: map[string]string{"encrypted": ""}})
		h1.network(cnm.NetworkSpec{Name: "plain", Driver: "overlay", Attachable: true})
		waitNetwork(b, h2, "sec")
		waitNetwork(b, h2, "plain")
		a := h1.sandbox("a", "sec", "plain")
		h2.sandbox("b", "sec", "plain")
		serveBench(b, openNS(b, h2.sandboxKey("b")), "", 10, 11)
		hns := []*netns.Namespace{openNS(b, h1.hostPath), openNS(b, h2.hostPath)}
		inner := rawWireguardGo(b, hns)
		vx := rawVXLAN(b, hns, inner)
		serveBench(b, hns[1], "", 10, 11)
		from := openNS(b, a.Key)
		paths := []benchPath{
			{"encrypted", from, netip.AddrPortFrom(h2.addr("b", "sec", false), 11)},
			{"plain", from, netip.AddrPortFrom(h2.addr("b", "plain", false), 11)},
			{"wireguard-go", hns[0], netip.AddrPortFrom(inner[1], 11)},
			{"vxlan-in-wireguard-go", hns[0], netip.AddrPortFrom(vx, 11)},
			{"underlay", hns[0], hostAddr(1, 11)},
		}
		for _, p := range paths {
			q := p
			q.to = netip.AddrPortFrom(p.to.Addr(), 10) // its line server
			q.wait(b)
		}
		g := throughputRounds(b, paths, 1)
		b.ReportMetric(g["encrypted"]/g["wireguard-go"], "encrypted/wireguard-go")
		b.ReportMetric(g["encrypted"]/g["vxlan-in-wireguard-go"], "encrypted/vxlan-in-wireguard-go")
		b.ReportMetric(g["encrypted"]/g["plain"], "encrypted/plain")
	})
	b.Run("rotation", func(b *testing.B) {
		l := newClusterLab(b, 3)
		l.hosts[0].network(cnm.NetworkSpec{Name: "sec", Driver: "overlay", Attachable: true, Options: map[string]string{"encrypted": ""}})
		for i, h := range l.hosts {
			waitNetwork(b, h, "sec")
			h.sandbox(fmt.Sprintf("s%d", i+1), "sec")
		}
		listen(b, l.hosts[0].sandboxKey("s1"))
		s1 := l.hosts[0].addr("s1", "sec", false)
		for i, h := range l.hosts[1:] {
			key := h.sandboxKey(fmt.Sprintf("s%d", i+2))
			if err := within(10*time.Second, func() error { return dialEcho(key, s1, time.Second) }); err != nil {
				b.Fatal(err)
			}
		}
		var took []time.Duration
		for b.Loop() {
			for i := range 10 {
				r, err := l.hosts[i%3].s.RotateKey(b.Context())
				if err != nil || len(r.Missing) > 0 {
					b.Fatalf("rotation %d: %+v, %v", i, r, err)
				}
				took = append(took, r.Took)
			}
		}
		b.ReportMetric(float64(median(took).Microseconds())/1e3, "rotation-ms")
		b.ReportMetric(float64(slices.Max(took).Microseconds())/1e3, "rotation-max-ms")
	})
}

// rawWireguardGo builds a wireguard-go pair by hand between the namespaces hns[0]
// and hns[1] (the hosts' own, underlay 192.0.2.1 and .2, UDP 51821): TUN "wgraw0"
// in each, 198.51.100.1 and .2, MTU 1440 (the underlay's 1500 less WireGuard's 60, as
// pier's own device). It returns both inner addresses. A minimal copy of wg's
// rawDevice (BenchmarkRawWireguardGo), which is unexported there, with its sockets
// kept in the namespace (nsBind).
func rawWireguardGo(b *testing.B, hns []*netns.Namespace) [2]netip.Addr {
	var keys [2]wg.Key
	for i := range keys {
		var err error
		if keys[i], err = wg.GenerateKey(); err != nil {
			b.Fatal(err)
		}
	}
	inner := [2]netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")}
	for i, ns := range hns {
		o := 1 - i
		pub := keys[o].Public()
		cfg := fmt.Sprintf("private_key=%s\nlisten_port=51821\npublic_key=%s\nendpoint=%s\nallowed_ip=%s/32\n",
			hex.EncodeToString(keys[i][:]), hex.EncodeToString(pub[:]), hostAddr(o, 51821), inner[o])
		var dev *device.Device
		var err error
		nstest.Do(b, ns.Handle, func() {
			var td tun.Device
			if td, err = tun.CreateTUN("wgraw0", 1500-60); err != nil {
				return
			}
			dev = device.NewDevice(td, &nsBind{conn.NewStdNetBind(), ns}, device.NewLogger(device.LogLevelSilent, ""))
			if err = dev.IpcSet(cfg); err == nil {
				err = dev.Up()
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(dev.Close)
		link, err := ns.NL.LinkByName("wgraw0")
		if err == nil {
			err = ns.NL.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: inner[i].AsSlice(), Mask: net.CIDRMask(32, 32)}})
		}
		if err == nil {
			err = ns.NL.LinkSetUp(link)
		}
		if err == nil {
			err = ns.NL.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK,
				Dst: &net.IPNet{IP: inner[o].AsSlice(), Mask: net.CIDRMask(32, 32)}})
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	return inner
}

// nsBind opens the UDP sockets in ns, whichever goroutine asks: wireguard-go also
// brings the device up (re-opening its sockets) from its TUN event goroutine when the
// link comes up, on a thread in the test process's own namespace. (As wg's nsBind.)
type nsBind struct {
	conn.Bind
	ns *netns.Namespace
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	nerr := b.ns.Do(func() error { fns, actual, err = b.Bind.Open(port); return nil })
	return fns, actual, errors.Join(nerr, err)
}

// rawVXLAN puts a VXLAN device by hand over the wireguard-go pair (VNI 999, UDP 4790
// between the inner addresses, 203.0.113.1 and .2/24 on it, MTU 1390 as pier's
// encrypted networks): the encrypted overlay's traffic without pier. It returns host
// 2's address on it.
func rawVXLAN(b *testing.B, hns []*netns.Namespace, inner [2]netip.Addr) netip.Addr {
	addrs := [2]netip.Addr{netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2")}
	for i, ns := range hns {
		vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vxraw0", MTU: 1390}, VxlanId: 999, Port: 4790,
			SrcAddr: inner[i].AsSlice(), Group: inner[1-i].AsSlice()}
		err := ns.NL.LinkAdd(vx)
		if err == nil {
			b.Cleanup(func() { _ = ns.NL.LinkDel(vx) })
			err = ns.NL.AddrAdd(vx, &netlink.Addr{IPNet: &net.IPNet{IP: addrs[i].AsSlice(), Mask: net.CIDRMask(24, 32)}})
		}
		if err == nil {
			err = ns.NL.LinkSetUp(vx)
		}
		if err != nil {
			b.Fatalf("a VXLAN device over the wireguard-go pair: %v", err)
		}
	}
	return addrs[1]
}

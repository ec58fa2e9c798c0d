package stack

import (
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/portmap"
)

// BenchmarkConnectDisconnect measures endpoint create+join (connect) and leave+delete
// (disconnect) on a bridge network, reported separately as ms/connect and
// ms/disconnect. Compare with BenchmarkRawVethBaseline, the bare kernel work.
func BenchmarkConnectDisconnect(b *testing.B) {
	e := newEnvB(b)
	c := e.s.Controller
	ctx := b.Context()
	e.networkB(cnm.NetworkSpec{Name: "bench"})
	if _, err := c.CreateSandbox(ctx, cnm.SandboxSpec{Name: "sb"}); err != nil {
		b.Fatal(err)
	}
	var conn, disc time.Duration
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		if _, err := c.Connect(ctx, "bench", "sb", cnm.EndpointSpec{}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := c.Disconnect(ctx, "bench", "sb"); err != nil {
			b.Fatal(err)
		}
		conn, disc = conn+t1.Sub(t0), disc+time.Since(t1)
	}
	b.ReportMetric(float64(conn.Microseconds())/1000/float64(b.N), "ms/connect")
	b.ReportMetric(float64(disc.Microseconds())/1000/float64(b.N), "ms/disconnect")
}

// BenchmarkRawVethBaseline is the kernel floor for a join: a veth pair with its peer
// created in the namespace, enslaved, addressed, up, default route; then deleted.
func BenchmarkRawVethBaseline(b *testing.B) {
	e := newEnvB(b)
	e.networkB(cnm.NetworkSpec{Name: "bench"})
	sb, err := e.s.Controller.CreateSandbox(b.Context(), cnm.SandboxSpec{Name: "sb"})
	if err != nil {
		b.Fatal(err)
	}
	host, inside := e.s.Host, mustOpen(b, sb.Key)
	br, err := host.NL.LinkByName("br-" + mustNet(b, e).ID[:12])
	if err != nil {
		b.Fatal(err)
	}
	var add, del time.Duration
	for b.Loop() {
		t0 := time.Now()
		rawAttach(b, host, inside, br)
		t1 := time.Now()
		l, _ := host.NL.LinkByName("rawv")
		if err := host.NL.LinkDel(l); err != nil {
			b.Fatal(err)
		}
		add, del = add+t1.Sub(t0), del+time.Since(t1)
	}
	b.ReportMetric(float64(add.Microseconds())/1000/float64(b.N), "ms/connect")
	b.ReportMetric(float64(del.Microseconds())/1000/float64(b.N), "ms/disconnect")
}

func rawAttach(b *testing.B, host, inside *netns.Namespace, br netlink.Link) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MasterIndex, attrs.Flags = "rawv", br.Attrs().Index, net.FlagUp
	fd, err := vns.GetFromPath(inside.Path)
	if err != nil {
		b.Fatal(err)
	}
	defer fd.Close()
	if err := host.NL.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth9", PeerNamespace: netlink.NsFd(int(fd))}); err != nil {
		b.Fatal(err)
	}
	l, err := inside.NL.LinkByName("eth9")
	if err != nil {
		b.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("172.17.200.2/16")
	if err := inside.NL.AddrAdd(l, addr); err != nil {
		b.Fatal(err)
	}
	if err := inside.NL.LinkSetUp(l); err != nil {
		b.Fatal(err)
	}
	if err := inside.NL.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("172.17.0.1")}); err != nil {
		b.Fatal(err)
	}
}

func mustOpen(b *testing.B, key string) *netns.Namespace {
	ns, err := netns.Open(key)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ns.Close() })
	return ns
}

func mustNet(b *testing.B, e *env) cnm.Network {
	n, err := e.s.Controller.Network(b.Context(), "bench")
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkConnect measures create+join alone: each iteration connects a fresh sandbox,
// with no veth deletions running in the background.
func BenchmarkConnect(b *testing.B) {
	e := newEnvB(b)
	c := e.s.Controller
	ctx := b.Context()
	e.networkB(cnm.NetworkSpec{Name: "bench"})
	var names []string
	for i := range b.N {
		sb, err := c.CreateSandbox(ctx, cnm.SandboxSpec{Name: "sb" + strconv.Itoa(i)})
		if err != nil {
			b.Fatal(err)
		}
		names = append(names, sb.Name)
	}
	b.ResetTimer()
	for _, name := range names {
		if _, err := c.Connect(ctx, "bench", name, cnm.EndpointSpec{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSandboxWithPorts measures sandbox create + connect to a bridge network with
// 0 and with 200 published TCP ports (issue 4: goal +≤ 20 ms, no extra processes), and
// reports the Go heap growth while the 200 ports stay published.
func BenchmarkSandboxWithPorts(b *testing.B) {
	for _, n := range []int{0, 200} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			e := newEnvB(b)
			e.networkB(cnm.NetworkSpec{Name: "bench"})
			var ports []portmap.Spec
			if n > 0 {
				ports, _ = portmap.ParseSpec("20000-" + strconv.Itoa(20000+n-1) + ":20000-" + strconv.Itoa(20000+n-1))
			}
			c, ctx := e.s.Controller, b.Context()
			var heap uint64
			for i := 0; b.Loop(); i++ {
				name := "sb" + strconv.Itoa(i)
				before := heapInUse()
				if _, err := c.CreateSandbox(ctx, cnm.SandboxSpec{Name: name, Ports: ports}); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Connect(ctx, "bench", name, cnm.EndpointSpec{}); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				heap += heapInUse() - min(before, heapInUse())
				if err := c.DeleteSandbox(ctx, name, true); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(heap)/float64(b.N)/1024, "KiB-heap/op")
		})
	}
}

func heapInUse() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

package lb

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
)

// BenchmarkBackendChange is the time to apply one backend change (remove a backend,
// or add it back) to one service in a table of N services × 10 backends, in a real
// namespace. The goal: p99 ≤ 5 ms at N = 1,000, and no growth with N.
func BenchmarkBackendChange(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			nstest.Require(b, "root")
			ns := nstest.New(b)
			tbl, err := New(b.Context(), Options{NetNS: ns})
			if err != nil {
				b.Fatal(err)
			}
			defer tbl.Close()
			for i := range n {
				if err := tbl.Set(b.Context(), svcN(i, 10)); err != nil {
					b.Fatal(err)
				}
			}
			full, less := svcN(n/2, 10), svcN(n/2, 10)
			less.Backends = less.Backends[1:]
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := range b.N {
				s := full
				if i%2 == 0 {
					s = less
				}
				start := time.Now()
				if err := tbl.Set(b.Context(), s); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			reportPercentiles(b, lat)
		})
	}
}

// BenchmarkFirstPacket is the time of a TCP connect (SYN out, SYN-ACK back: the
// packet that goes through the dispatch map and the DNAT) to a VIP among N services.
// Goal: the ratio between N = 1,000 and N = 10 is ≤ 1.05. The connect to the
// backend's own address (no VIP) is the baseline beside it.
func BenchmarkFirstPacket(b *testing.B) {
	nstest.Require(b, "root")
	l := netlab.New(b, netlab.Options{})
	l.Bridge("br0", "10.1.0.1/24")
	client := l.Peer("vc", "br0", []string{"10.1.0.10/24"}, []string{"10.1.0.1"})
	server := l.Peer("vs", "br0", []string{"10.1.0.11/24"}, nil)
	netlab.Serve(b, server, ":80", func(c net.Conn) { c.Close() })
	tbl, err := New(b.Context(), Options{NetNS: client.Handle})
	if err != nil {
		b.Fatal(err)
	}
	defer tbl.Close()
	added := 0
	dial := func(b *testing.B, addr string) {
		for range b.N {
			c, err := netlab.Dial(b, client, "tcp4", addr, 2*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	}
	for _, n := range []int{10, 1000} {
		for ; added < n; added++ {
			s := svcN(added, 10)
			if added == 0 {
				s.Backends = []netip.Addr{netip.MustParseAddr("10.1.0.11")}
			}
			if err := tbl.Set(b.Context(), s); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) { dial(b, svcN(0, 0).VIP.String()+":80") })
		b.Run(fmt.Sprintf("services=%d/direct", n), func(b *testing.B) { dial(b, "10.1.0.11:80") })
	}
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	at := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(at(0.5), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
}

package ingress

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/piernet/pier/internal/nstest"
)

// BenchmarkIngressBackendChange is the time to apply one backend change (remove a
// backend, or add it back) to one published service among N services × 10 backends,
// in a real namespace. As lb's BenchmarkBackendChange: the goal is no growth with N
// (the batch is the ~7 slot elements that change hands).
func BenchmarkIngressBackendChange(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprintf("services=%d", n), func(b *testing.B) {
			nstest.Require(b, "root")
			ns := nstest.New(b)
			p, err := New(b.Context(), Options{NetNS: ns})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			for i := range n {
				if err := p.Set(b.Context(), svcN(i, 10)); err != nil {
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
				if err := p.Set(b.Context(), s); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			at := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) }
			b.ReportMetric(at(0.5), "p50-µs")
			b.ReportMetric(at(0.99), "p99-µs")
		})
	}
}

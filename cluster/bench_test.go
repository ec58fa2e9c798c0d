package cluster

import (
	"fmt"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/piernet/pier/cluster/clustertest"
	"github.com/piernet/pier/ipam"
)

func benchNodes(b *testing.B, n int) []*Cluster {
	etcd := clustertest.Start(b)
	var out []*Cluster
	for i := range n {
		c, err := New(Options{KV: NewEtcdKV(etcd.Client(b)), NodeID: fmt.Sprintf("id-h%d", i+1), NodeName: fmt.Sprintf("h%d", i+1),
			Advertise: netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)})})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Start(b.Context()); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close(b.Context()) })
		out = append(out, c)
	}
	return out
}

// BenchmarkWatchLatency: an endpoint record written by node 1 until it is in node 3's
// view (the overlay issue's convergence budget: p99 ≤ 10 ms for this part).
func BenchmarkWatchLatency(b *testing.B) {
	nodes := benchNodes(b, 3)
	ctx := b.Context()
	if err := nodes[0].CreateNetwork(ctx, NetworkRecord{ID: "n1", Name: "ov", Driver: "overlay"}); err != nil {
		b.Fatal(err)
	}
	_, events := nodes[2].Subscribe(ctx)
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		id := fmt.Sprintf("e%d", i)
		if err := nodes[0].PutEndpoint(ctx, EndpointRecord{ID: id, Name: id, NetworkID: "n1"}); err != nil {
			b.Fatal(err)
		}
		for ev := range events {
			if ev.Kind == EndpointAdded && ev.Endpoint.ID == id {
				break
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	reportPercentiles(b, lat)
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

func BenchmarkCreateNetwork(b *testing.B) {
	nodes := benchNodes(b, 1)
	ctx := b.Context()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := nodes[0].CreateNetwork(ctx, NetworkRecord{ID: fmt.Sprintf("n%d", i), Name: fmt.Sprintf("ov%d", i), Driver: "overlay"}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRequestAddress(b *testing.B) {
	nodes := benchNodes(b, 1)
	ctx := b.Context()
	p, err := nodes[0].IPAM().RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.64.0.0/12"), Network: "big"})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := nodes[0].IPAM().RequestAddress(ctx, ipam.AddressRequest{PoolID: p.ID}); err != nil {
			b.Fatal(err)
		}
	}
}

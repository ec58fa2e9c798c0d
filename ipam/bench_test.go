package ipam_test

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/piernet/pier/ipam"
)

// BenchmarkRequestAddress measures one dynamic allocation (plus its release, to keep
// the pool at a steady 10k used addresses) against a naive baseline that keeps a map
// and scans from the start of the subnet, as a bitmap without a cursor would.
func BenchmarkRequestAddress(b *testing.B) {
	b.Run("v4-16/serial-10k", func(b *testing.B) { benchAlloc(b, "10.1.0.0/16", false) })
	b.Run("v4-16/scattered-10k", func(b *testing.B) { benchAlloc(b, "10.1.0.0/16", true) })
	b.Run("v4-8/serial-10k", func(b *testing.B) { benchAlloc(b, "10.0.0.0/8", false) })
	b.Run("v6-64/scattered-10k", func(b *testing.B) { benchAlloc(b, "fd00:1::/64", true) })
	b.Run("baseline-naive-scan/v4-16/serial-10k", benchNaive)
}

func benchAlloc(b *testing.B, subnet string, scattered bool) {
	a := newAlloc(b, ipam.Config{})
	p := mustPool(b, a, ipam.PoolRequest{Subnet: pfx(subnet), Network: "bench"})
	fill(b, a, p, scattered)
	ctx, req := b.Context(), ipam.AddressRequest{PoolID: p.ID}
	for b.Loop() {
		got, err := a.RequestAddress(ctx, req)
		if err == nil {
			err = a.ReleaseAddress(ctx, p.ID, got.Addr())
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

// fill allocates 10k addresses, serially or at random offsets in the first /16.
func fill(b *testing.B, a *ipam.Default, p ipam.Pool, scattered bool) {
	rng := rand.New(rand.NewPCG(1, 2))
	for n := 0; n < 10_000; {
		req := ipam.AddressRequest{PoolID: p.ID}
		if scattered {
			req.Addr = nth(p.Subnet.Addr(), 1+rng.IntN(65534))
		}
		if _, err := a.RequestAddress(b.Context(), req); err == nil {
			n++
		}
	}
}

func benchNaive(b *testing.B) {
	used := map[netip.Addr]bool{}
	first, last := addr("10.1.0.1"), addr("10.1.255.254")
	next := func() netip.Addr {
		for a := first; a.Compare(last) <= 0; a = a.Next() {
			if !used[a] {
				return a
			}
		}
		b.Fatal("full")
		return netip.Addr{}
	}
	for range 10_000 {
		used[next()] = true
	}
	for b.Loop() {
		a := next()
		used[a] = true
		delete(used, a)
	}
}

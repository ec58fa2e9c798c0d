package firewall

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/piernet/pier/internal/nstest"
)

// BenchmarkSetRemoveBridge measures one SetBridge plus one RemoveBridge in a
// real namespace with n other bridges present: the cost should barely grow
// with n, because each change is one batch of set elements.
func BenchmarkSetRemoveBridge(b *testing.B) {
	for _, n := range []int{0, 100, 1000} {
		b.Run(fmt.Sprintf("bridges=%d", n), func(b *testing.B) {
			ns := nstest.New(b)
			fw, err := New(b.Context(), Options{NetNS: ns})
			if err != nil {
				b.Fatal(err)
			}
			defer fw.Close()
			for i := range n {
				if err := fw.SetBridge(b.Context(), benchBridge(i)); err != nil {
					b.Fatal(err)
				}
			}
			br := benchBridge(n)
			for b.Loop() {
				if err := fw.SetBridge(b.Context(), br); err != nil {
					b.Fatal(err)
				}
				if err := fw.RemoveBridge(b.Context(), br.Name); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchBridge(i int) Bridge {
	return Bridge{
		Name:       fmt.Sprintf("br-%012x", i),
		Owner:      fmt.Sprintf("%064x", i),
		Subnets4:   []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)},
		ICC:        true,
		Masquerade: true,
	}
}

// BenchmarkSetPorts publishes one more port (and unpublishes it again:
// two batches per iteration) in a real namespace where n ports are already
// published. The goal is a ratio of at most 1.2 between n=10000 and n=0:
// each change is a handful of map elements whatever the map size.
//
// With watched, the self-healing watcher runs too and reads the
// notifications of every change: its cost per change.
func BenchmarkSetPorts(b *testing.B) {
	for _, bc := range []struct {
		n       int
		watched bool
	}{{0, false}, {10000, false}, {0, true}, {10000, true}} {
		b.Run(fmt.Sprintf("published=%d/watched=%v", bc.n, bc.watched), func(b *testing.B) {
			n := bc.n
			ns := nstest.New(b)
			fw, err := New(b.Context(), Options{NetNS: ns})
			if err != nil {
				b.Fatal(err)
			}
			defer fw.Close()
			if err := fw.Reconcile(b.Context()); err != nil {
				b.Fatal(err)
			}
			if bc.watched {
				if err := fw.Start(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
			for i := 0; i < n; i += 100 {
				if err := fw.SetPorts(b.Context(), fmt.Sprintf("owner-%05d", i), manyPorts(i, 100)); err != nil {
					b.Fatal(err)
				}
			}
			one := manyPorts(n, 1)
			for b.Loop() {
				if err := fw.SetPorts(b.Context(), "one-more", one); err != nil {
					b.Fatal(err)
				}
				if err := fw.RemovePorts(b.Context(), "one-more"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReconcile rewrites the whole table holding n published ports:
// what a heal costs.
func BenchmarkReconcile(b *testing.B) {
	for _, n := range []int{0, 10000} {
		b.Run(fmt.Sprintf("published=%d", n), func(b *testing.B) {
			ns := nstest.New(b)
			fw, err := New(b.Context(), Options{NetNS: ns})
			if err != nil {
				b.Fatal(err)
			}
			defer fw.Close()
			for i := 0; i < n; i += 100 {
				if err := fw.SetPorts(b.Context(), fmt.Sprintf("owner-%05d", i), manyPorts(i, 100)); err != nil {
					b.Fatal(err)
				}
			}
			for b.Loop() {
				if err := fw.Reconcile(b.Context()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

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

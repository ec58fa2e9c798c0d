package firewall

import (
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/piernet/pier/internal/nstest"
	"golang.org/x/sys/unix"
)

func TestProbeTiming(t *testing.T) {
	ns := nstest.New(t)
	fw, _ := New(t.Context(), Options{NetNS: ns})
	if err := fw.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	e := element{names: []string{"x"}}
	for i := range 6 {
		var nc *netlink.Conn
		s := time.Now()
		c, _ := nftables.New(nftables.WithNetNSFd(int(ns)), nftables.WithSockOptions(func(n *netlink.Conn) error { nc = n; return nil }))
		if i%2 == 0 {
			c.SetAddElements(setBridges.set(newTable()), e.encode())
		} else {
			c.SetDeleteElements(setBridges.set(newTable()), e.encode())
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		t.Logf("transient setelem flush incl close: %v", time.Since(s))
		_ = nc
	}
	// raw: dial, close only
	for range 3 {
		s := time.Now()
		n, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(ns)})
		if err != nil {
			t.Fatal(err)
		}
		d := time.Since(s)
		n.Close()
		t.Logf("dial %v close %v", d, time.Since(s)-d)
	}
}

package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/piernet/pier/cluster/clustertest"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/ipam"
)

// gatedKV holds new watches until its gate opens: a node that lost its watch stays
// behind while the store moves on.
type gatedKV struct {
	KV
	mu   sync.Mutex
	gate chan struct{}
}

func (g *gatedKV) Watch(ctx context.Context, prefix string, rev int64) <-chan WatchResponse {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
		}
	}
	return g.KV.Watch(ctx, prefix, rev)
}

func (g *gatedKV) hold() { g.mu.Lock(); g.gate = make(chan struct{}); g.mu.Unlock() }
func (g *gatedKV) release() {
	g.mu.Lock()
	close(g.gate)
	g.gate = nil
	g.mu.Unlock()
}

// TestOnEtcd runs the cluster against a real etcd: concurrent allocations from three
// nodes, a member killed mid-watch and a compaction of the history the lagging node
// needs, lease expiry.
func TestOnEtcd(t *testing.T) {
	ctx := t.Context()
	etcd := clustertest.Start(t)
	kvA, kvB := NewEtcdKV(etcd.Client(t)), &gatedKV{KV: NewEtcdKV(etcd.Client(t))}
	a := newNode(t, kvA, "h1", 1)
	b := newNode(t, kvB, "h2", 2)
	c := newNode(t, NewEtcdKV(etcd.Client(t)), "h3", 3)

	pool, err := a.IPAM().RequestPool(ctx, ipam.PoolRequest{Network: "ov"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	got := map[netip.Addr]bool{}
	var wg sync.WaitGroup
	for _, n := range []*Cluster{a, b, c} {
		for range 50 {
			wg.Go(func() {
				p, err := n.IPAM().RequestAddress(ctx, ipam.AddressRequest{PoolID: pool.ID})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got[p.Addr()] = true
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	if len(got) != 150 {
		t.Fatalf("%d distinct addresses from 3 x 50 concurrent requests", len(got))
	}

	if err := a.CreateNetwork(ctx, NetworkRecord{ID: "n1", Name: "ov", Driver: "overlay"}); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "h2 to see ov", 2*time.Second, func() bool { return len(b.Networks()) == 1 })
	// The member dies under h2's watch; h2 stays behind while the store moves on and
	// its history is compacted.
	kvB.hold()
	etcd.Stop()
	time.Sleep(100 * time.Millisecond) // let the watches notice
	etcd.Restart(t)
	// The clients reconnect on their own (gRPC backoff); writes work again once they have.
	nstest.Eventually(t, "h1's client to reconnect", 15*time.Second, func() bool {
		return a.PutEndpoint(ctx, EndpointRecord{ID: "e0", Name: "e0", NetworkID: "n1"}) == nil
	})
	for i := 1; i < 10; i++ {
		if err := a.PutEndpoint(ctx, EndpointRecord{ID: fmt.Sprintf("e%d", i), Name: fmt.Sprintf("e%d", i), NetworkID: "n1"}); err != nil {
			t.Fatal(err)
		}
	}
	_ = a.DeleteEndpoint(ctx, "n1", "e0")
	resp, err := etcd.Client(t).Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.Client(t).Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	kvB.release()
	nstest.Eventually(t, "h2 to converge after the compaction", 10*time.Second, func() bool {
		eps := b.Endpoints("n1")
		return len(eps) == 9
	})
	for _, ep := range b.Endpoints("n1") {
		if ep.Name == "e0" {
			t.Fatal("h2 kept a deleted endpoint")
		}
	}
	nstest.Eventually(t, "h3 to see h1 ready and its endpoints", 5*time.Second, func() bool {
		return stateOf(c, "h1") == Ready && len(c.Endpoints("n1")) == 9
	})
	// h1 stops renewing: h3 sees it down within TTL + 1 s (plus etcd's whole-second rounding).
	a.cancel()
	start := time.Now()
	nstest.Eventually(t, "h3 to see h1 down", 4*time.Second, func() bool { return stateOf(c, "h1") == Down })
	t.Logf("h1 seen down %v after its keepalive stopped (TTL %v, rounded up to whole seconds by etcd)", time.Since(start).Round(10*time.Millisecond), a.o.TTL)
	if len(c.Endpoints("n1")) != 0 {
		t.Fatalf("h1's endpoints still visible on h3 while it is down")
	}
}

package cluster

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/nstest"
)

func TestServicesAcrossNodes(t *testing.T) {
	kv := NewFake()
	a, b := newNode(t, kv, "a", 1), newNode(t, kv, "b", 2)
	_, evs := b.Subscribe(t.Context())
	rec := ServiceRecord{ID: "s1", Name: "web", Mode: "vip", Ports: []string{"80/tcp"}, StopGrace: time.Second,
		VIPs: []ServiceVIPRecord{{NetworkID: "n1", Addr: netip.MustParsePrefix("10.0.0.2/24")}}}
	if err := a.CreateService(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	if err := b.CreateService(t.Context(), ServiceRecord{ID: "s2", Name: "web", VIPs: rec.VIPs}); !errdefs.Is(err, errdefs.KindConflict) {
		t.Fatalf("a second service named web: %v, want a conflict", err)
	}
	if got := collect(t, evs, 1); !slices.Equal(got, []string{"service+ web"}) {
		t.Fatalf("node b saw %v", got)
	}
	if err := b.DeleteService(t.Context(), "s1"); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, evs, 1); !slices.Equal(got, []string{"service- web"}) {
		t.Fatalf("node b saw %v", got)
	}
	if err := a.CreateService(t.Context(), ServiceRecord{ID: "s3", Name: "web", VIPs: rec.VIPs}); err != nil {
		t.Fatalf("the name is free again: %v", err)
	}
}

// WaitWithdrawn returns once every ready node acknowledged, and names the ones that
// did not when the timeout passes; deleting the endpoint clears the acknowledgements.
func TestWithdrawalNeedsEveryReadyNode(t *testing.T) {
	kv := NewFake()
	a, b, c := newNode(t, kv, "a", 1), newNode(t, kv, "b", 2), newNode(t, kv, "c", 3)
	nstest.Eventually(t, "three ready nodes", 5*time.Second, func() bool { return len(a.unacked("ep1")) == 3 })
	for _, n := range []*Cluster{a, b} {
		if err := n.AckWithdrawal(t.Context(), "ep1"); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	missing, err := a.WaitWithdrawn(t.Context(), "ep1", 300*time.Millisecond)
	if err != nil || !slices.Equal(missing, []string{"c"}) || time.Since(start) < 300*time.Millisecond {
		t.Fatalf("without c's acknowledgement: missing %v, err %v after %v; want [c] after the timeout", missing, err, time.Since(start))
	}
	done := make(chan []string)
	go func() {
		m, _ := a.WaitWithdrawn(t.Context(), "ep1", 10*time.Second)
		done <- m
	}()
	if err := c.AckWithdrawal(t.Context(), "ep1"); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-done:
		if len(m) != 0 {
			t.Fatalf("after every acknowledgement: missing %v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitWithdrawn did not return after the last acknowledgement")
	}
	if err := a.CreateNetwork(t.Context(), NetworkRecord{ID: "n1", Name: "ov", Driver: "overlay"}); err != nil {
		t.Fatal(err)
	}
	if err := a.PutEndpoint(t.Context(), EndpointRecord{ID: "ep1", Name: "t1", NetworkID: "n1", NodeID: "id-a", Service: "s1", Draining: true}); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteEndpoint(t.Context(), "n1", "ep1"); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "acknowledgements cleared with the endpoint", 5*time.Second, func() bool { return len(a.unacked("ep1")) == 3 })
}

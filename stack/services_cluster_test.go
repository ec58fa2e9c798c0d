package stack

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/lb"
)

// A service on an overlay across three clustered hosts: created on host 1, tasks on
// hosts 2 and 3, a client on host 1. The VIP spreads the client's connections over
// both remote tasks, names resolve on every host, and removing a task under load —
// acknowledged by every node through etcd before its grace period — fails nothing.
func TestServiceVIPAcrossClusterHosts(t *testing.T) {
	hosts := clusterHosts(t, 3)
	ctx := t.Context()
	hosts[0].network(cnm.NetworkSpec{Name: "ov", Driver: "overlay", Attachable: true})
	svc := hosts[0].service(cnm.ServiceSpec{Name: "web", Networks: []string{"ov"}, Ports: []lb.Port{{Proto: "tcp", Port: 80}},
		StopGrace: 5 * time.Second})
	vip := netip.AddrPortFrom(svc.VIPs[0].Addr.Addr(), 80)
	for _, h := range hosts[1:] {
		nstest.Eventually(t, "the service on another host", 10*time.Second, func() bool { _, err := h.s.Controller.Service(ctx, "web"); return err == nil })
	}
	const work = 10 * time.Millisecond
	hosts[1].taskWorking(t, "t2", "web", work)
	hosts[2].taskWorking(t, "t3", "web", work)
	client := hosts[0].sandbox("client", "ov")

	// Converged when both remote tasks answer through the VIP.
	seen := map[string]int{}
	nstest.Eventually(t, "both tasks behind the VIP on host 1", 10*time.Second, func() bool {
		if name, err := askName(client.Key, vip); err == nil {
			seen[name]++
		}
		return seen["t2"] > 0 && seen["t3"] > 0
	})
	// 300 connections, p = 1/2: mean 150, sd 8.7; 100 is 5.8 sd below.
	counts := map[string]int{}
	for range 300 {
		name, err := askName(client.Key, vip)
		if err != nil {
			t.Fatalf("connection to the VIP across hosts: %v", err)
		}
		counts[name]++
	}
	if counts["t2"] < 100 || counts["t3"] < 100 {
		t.Fatalf("300 connections over tasks on hosts 2 and 3: %v", counts)
	}
	t.Logf("300 connections from host 1 through the VIP: %v", counts)
	if got, err := lookup(t, hosts[0], client, "web"); err != nil || !slices.Equal(got, []string{vip.Addr().String()}) {
		t.Fatalf("web from host 1 = %v, %v; want the VIP", got, err)
	}
	want := []string{hosts[1].addr("t2", "ov", false).String(), hosts[2].addr("t3", "ov", false).String()}
	slices.Sort(want)
	got := queryA(t, hosts[0], client, "tasks.web")
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("tasks.web from host 1 = %v, want %v", got, want)
	}
	if err := hosts[0].s.Controller.DeleteService(ctx, "web"); err == nil {
		t.Fatal("a service with tasks on other hosts was removed")
	}

	// Remove t2 (on host 2) while host 1's client drives load at the VIP.
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := askName(client.Key, vip); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	awaitAnswers(t, &ok, 50)
	start := time.Now()
	if err := hosts[1].s.Controller.DeleteSandbox(ctx, "t2", true); err != nil {
		t.Fatal(err)
	}
	removal := time.Since(start)
	awaitAnswers(t, &ok, 50)
	close(stop)
	wg.Wait()
	t.Logf("removing t2 took %v (withdrawal acknowledged by every node, then its connections finished); %d requests answered, %d failed",
		removal, ok.Load(), failed.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed while t2 was removed; first: %v", failed.Load(), firstErr.Load())
	}
	for range 20 {
		if name, err := askName(client.Key, vip); err != nil || name != "t3" {
			t.Fatalf("after t2's removal: %q, %v (want t3 only)", name, err)
		}
	}
	if err := hosts[2].s.Controller.DeleteSandbox(ctx, "t3", true); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "host 1 to see no task", 10*time.Second, func() bool { return len(hosts[0].s.Controller.RemoteTasks(ctx, svc)) == 0 })
	if err := hosts[0].s.Controller.DeleteService(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts[1:] {
		nstest.Eventually(t, "the service gone on another host", 10*time.Second, func() bool { _, err := h.s.Controller.Service(ctx, "web"); return err != nil })
	}
}

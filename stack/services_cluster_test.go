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

// A service on an overlay across three clustered hosts: created on host 1, a task on
// each host, a client on host 1. The VIP spreads the client's connections over the
// three tasks, names resolve, and replacing the tasks one by one under load — each
// removal acknowledged by every node through etcd before its grace period — fails
// nothing.
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
	tasks := []string{"t1", "t2", "t3"}
	for i, name := range tasks {
		hosts[i].taskWorking(t, name, "web", work)
	}
	client := hosts[0].sandbox("client", "ov")

	// Converged when every task answers through the VIP.
	seen := map[string]int{}
	nstest.Eventually(t, "all three tasks behind the VIP on host 1", 10*time.Second, func() bool {
		if name, err := askName(client.Key, vip); err == nil {
			seen[name]++
		}
		return seen["t1"] > 0 && seen["t2"] > 0 && seen["t3"] > 0
	})
	// 999 connections, p = 1/3 ± 1/64: mean ≈ 333, sd ≈ 15; 250 is > 5 sd below.
	counts := map[string]int{}
	for range 999 {
		name, err := askName(client.Key, vip)
		if err != nil {
			t.Fatalf("connection to the VIP across hosts: %v", err)
		}
		counts[name]++
	}
	for _, name := range tasks {
		if counts[name] < 250 {
			t.Errorf("task %s answered %d of 999 (want ≥ 250): %v", name, counts[name], counts)
		}
	}
	t.Logf("999 connections from host 1 through the VIP: %v", counts)
	if got, err := lookup(t, hosts[0], client, "web"); err != nil || !slices.Equal(got, []string{vip.Addr().String()}) {
		t.Fatalf("web from host 1 = %v, %v; want the VIP", got, err)
	}
	var want []string
	for i, name := range tasks {
		want = append(want, hosts[i].addr(name, "ov", false).String())
	}
	slices.Sort(want)
	got := queryA(t, hosts[2], hosts[2].sandbox("probe", "ov"), "tasks.web")
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("tasks.web from host 3 = %v, want %v", got, want)
	}
	if err := hosts[0].s.Controller.DeleteService(ctx, "web"); err == nil {
		t.Fatal("a service with tasks on other hosts was removed")
	}

	// Replace the three tasks, one host after the other, while host 1's client drives
	// load at the VIP.
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var mu sync.Mutex
	answered := map[string]int{}
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
				if name, err := askName(client.Key, vip); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
					mu.Lock()
					answered[name]++
					mu.Unlock()
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	awaitAnswers(t, &ok, 50)
	var removals []time.Duration
	for i, old := range tasks {
		hosts[i].taskWorking(t, "n"+old[1:], "web", work)
		awaitAnswers(t, &ok, 50)
		start := time.Now()
		if err := hosts[i].s.Controller.DeleteSandbox(ctx, old, true); err != nil {
			t.Fatal(err)
		}
		removals = append(removals, time.Since(start))
	}
	awaitAnswers(t, &ok, 50)
	close(stop)
	wg.Wait()
	t.Logf("replacing 3 tasks on 3 hosts: removals took %v (acknowledged by every node, then connections finished); %d requests answered, %d failed; by task %v",
		removals, ok.Load(), failed.Load(), answered)
	if failed.Load() > 0 {
		t.Fatalf("%d requests failed during the rolling replacement; first: %v", failed.Load(), firstErr.Load())
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		if answered[n] == 0 {
			t.Errorf("new task %s never answered: %v", n, answered)
		}
	}
	for i, n := range []string{"n1", "n2", "n3"} {
		if err := hosts[i].s.Controller.DeleteSandbox(ctx, n, true); err != nil {
			t.Fatal(err)
		}
	}
	nstest.Eventually(t, "host 1 to see no remote task", 10*time.Second, func() bool { return len(hosts[0].s.Controller.RemoteTasks(ctx, svc)) == 0 })
	if err := hosts[0].s.Controller.DeleteService(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts[1:] {
		nstest.Eventually(t, "the service gone on another host", 10*time.Second, func() bool { _, err := h.s.Controller.Service(ctx, "web"); return err != nil })
	}
}

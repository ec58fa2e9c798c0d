package stack

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/lb"
	"github.com/piernet/pier/netns"
)

// serveName runs a TCP server on :80 inside the sandbox that answers each connection
// with "<sandbox name> <client address as seen>" after work (a delay), and closes it.
func serveName(t *testing.T, sb cnm.Sandbox, work time.Duration) {
	t.Helper()
	ns, err := netns.Open(sb.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", ":80"); return }); err != nil {
		t.Fatalf("listening in %s: %v", sb.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				time.Sleep(work)
				fmt.Fprintf(c, "%s %s\n", sb.Name, c.RemoteAddr())
			}()
		}
	}()
}

// askName connects from the sandbox at key to addr and returns the answering task's
// name, checking that the task saw the client's own address.
func askName(key string, addr netip.AddrPort) (string, error) {
	ns, err := netns.Open(key)
	if err != nil {
		return "", err
	}
	defer ns.Close()
	var c net.Conn
	if err := ns.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr.String(), 2*time.Second); return }); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading the answer: %w", err)
	}
	name, peer, _ := strings.Cut(strings.TrimSpace(line), " ")
	if peer != c.LocalAddr().String() {
		return "", fmt.Errorf("task %s saw the client as %s; it is %s", name, peer, c.LocalAddr())
	}
	return name, nil
}

func (e *env) service(spec cnm.ServiceSpec) cnm.Service {
	e.t.Helper()
	s, err := e.s.Controller.CreateService(e.t.Context(), spec)
	if err != nil {
		e.t.Fatalf("creating service %s: %v", spec.Name, err)
	}
	return s
}

func (e *env) task(t *testing.T, name, svc string) cnm.Sandbox { return e.taskWorking(t, name, svc, 0) }

// taskWorking creates a task whose server takes work to answer each request, and
// waits until the controller has put it into rotation (it listens).
func (e *env) taskWorking(t *testing.T, name, svc string, work time.Duration) cnm.Sandbox {
	t.Helper()
	sb, err := e.s.Controller.CreateSandbox(t.Context(), cnm.SandboxSpec{Name: name, Service: svc})
	if err != nil {
		t.Fatalf("creating task %s: %v", name, err)
	}
	serveName(t, sb, work)
	nstest.Eventually(t, "task "+name+" ready", 5*time.Second, func() bool {
		got, err := e.s.Controller.Sandbox(t.Context(), name)
		return err == nil && !got.Starting
	})
	return sb
}

func TestServiceVIPOnBridge(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.network(cnm.NetworkSpec{Name: "app"})
	e.network(cnm.NetworkSpec{Name: "other"})
	web := e.service(cnm.ServiceSpec{Name: "web", Networks: []string{"app"}, Ports: []lb.Port{{Proto: "tcp", Port: 80}}})
	vip := web.VIPs[0].Addr.Addr()
	var taskAddrs []string
	for _, name := range []string{"web1", "web2", "web3"} {
		e.task(t, name, "web")
		taskAddrs = append(taskAddrs, e.addr(name, "app", false).String())
	}
	slices.Sort(taskAddrs)
	client := e.sandbox("client", "app")
	stranger := e.sandbox("stranger", "other")

	// Names: the service name is the VIP, tasks.web the tasks; other networks see neither.
	if got, err := lookup(t, e, client, "web"); err != nil || !slices.Equal(got, []string{vip.String()}) {
		t.Fatalf("web resolves to %v, %v; want the VIP [%s]", got, err, vip)
	}
	got := queryA(t, e, client, "tasks.web")
	slices.Sort(got)
	if !slices.Equal(got, taskAddrs) {
		t.Fatalf("tasks.web = %v, want %v", got, taskAddrs)
	}
	if got, err := lookup(t, e, stranger, "web"); err == nil {
		t.Fatalf("a sandbox on another network resolved web: %v", got)
	}

	// 600 connections to the VIP: every task gets a share. p = 1/3 ± 1/64 (slot
	// table, lb.Slots): mean ≈ 200, sd ≈ 11.5; 140 is more than 5 sd below it.
	counts := map[string]int{}
	for range 600 {
		name, err := askName(client.Key, netip.AddrPortFrom(vip, 80))
		if err != nil {
			t.Fatalf("connection to the VIP: %v", err)
		}
		counts[name]++
	}
	for _, name := range []string{"web1", "web2", "web3"} {
		if counts[name] < 140 {
			t.Errorf("task %s answered %d of 600 (want ≥ 140): %v", name, counts[name], counts)
		}
	}
	t.Logf("600 connections over 3 tasks: %v", counts)

	// A port the service does not list is refused at once; :80 beside it works.
	if _, err := askName(client.Key, netip.AddrPortFrom(vip, 81)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("unlisted port 81 on the VIP: %v, want connection refused", err)
	}

	// The VIP follows a restart of pierd (tables rewritten from the records).
	e.reopen()
	if name, err := askName(client.Key, netip.AddrPortFrom(vip, 80)); err != nil || !strings.HasPrefix(name, "web") {
		t.Fatalf("after a restart: %q, %v", name, err)
	}
	if _, err := e.s.Controller.CreateService(ctx, cnm.ServiceSpec{Name: "web", Networks: []string{"app"}}); err == nil {
		t.Fatal("a second service named web was accepted")
	}
	if err := e.s.Controller.DeleteService(ctx, "web"); err == nil {
		t.Fatal("a service with tasks was removed")
	}
}

func TestServiceWithoutTasksRefusesAtOnce(t *testing.T) {
	e := newEnv(t)
	e.network(cnm.NetworkSpec{Name: "app"})
	empty := e.service(cnm.ServiceSpec{Name: "empty", Networks: []string{"app"}})
	client := e.sandbox("client", "app")
	start := time.Now()
	_, err := askName(client.Key, netip.AddrPortFrom(empty.VIPs[0].Addr.Addr(), 80))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("service without tasks: %v, want connection refused", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refused after %v, want at once", d) // correctness bound, not a goal
	}
	// The same path works once a task exists (positive control).
	e.task(t, "t1", "empty")
	if name, err := askName(client.Key, netip.AddrPortFrom(empty.VIPs[0].Addr.Addr(), 80)); err != nil || name != "t1" {
		t.Fatalf("with one task: %q, %v", name, err)
	}
	// Removing the service needs its tasks gone; then its VIP is free again.
	if err := e.s.Controller.DeleteSandbox(t.Context(), "t1", true); err != nil {
		t.Fatal(err)
	}
	if err := e.s.Controller.DeleteService(t.Context(), "empty"); err != nil {
		t.Fatal(err)
	}
	if got, err := lookup(t, e, client, "empty"); err == nil {
		t.Fatalf("a removed service still resolves: %v", got)
	}
}

// A task enters rotation only once it listens on the service's port: before that the
// VIP sends nothing to it and tasks.web leaves it out (a connection sent to it would be
// refused). A restart of the controller keeps waiting for it.
func TestServiceTaskEntersRotationWhenListening(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	e.network(cnm.NetworkSpec{Name: "app"})
	web := e.service(cnm.ServiceSpec{Name: "web", Networks: []string{"app"}, Ports: []lb.Port{{Proto: "tcp", Port: 80}}})
	vip := netip.AddrPortFrom(web.VIPs[0].Addr.Addr(), 80)
	e.task(t, "up", "web")
	late, err := e.s.Controller.CreateSandbox(ctx, cnm.SandboxSpec{Name: "late", Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if !late.Starting {
		t.Fatal("a task that listens on nothing is not starting")
	}
	client := e.sandbox("client", "app")
	check := func(when string) {
		t.Helper()
		for range 60 {
			if name, err := askName(client.Key, vip); err != nil || name != "up" {
				t.Fatalf("%s: a connection to the VIP got %q, %v; want every one answered by the listening task", when, name, err)
			}
		}
		if got := queryA(t, e, client, "tasks.web"); !slices.Equal(got, []string{e.addr("up", "app", false).String()}) {
			t.Fatalf("%s: tasks.web = %v, want only the listening task", when, got)
		}
	}
	check("before it listens")
	e.reopen()
	if sb, err := e.s.Controller.Sandbox(ctx, "late"); err != nil || !sb.Starting {
		t.Fatalf("after a restart the task is %+v, %v; want still starting", sb, err)
	}
	check("after a restart")

	// Once it listens it gets its share, and its name.
	serveName(t, late, 0)
	seen := map[string]int{}
	nstest.Eventually(t, "the late task answering through the VIP", 5*time.Second, func() bool {
		name, err := askName(client.Key, vip)
		if err != nil {
			t.Fatalf("while the late task became ready: %v", err)
		}
		seen[name]++
		return seen["late"] > 0
	})
	got := queryA(t, e, client, "tasks.web")
	slices.Sort(got)
	want := []string{e.addr("late", "app", false).String(), e.addr("up", "app", false).String()}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("tasks.web = %v once both listen, want %v", got, want)
	}
	if sb, err := e.s.Controller.Sandbox(ctx, "late"); err != nil || sb.Starting {
		t.Fatalf("the listening task is %+v, %v; want ready", sb, err)
	}
}

func TestServiceDNSRRAndSticky(t *testing.T) {
	e := newEnv(t)
	e.network(cnm.NetworkSpec{Name: "app"})
	e.service(cnm.ServiceSpec{Name: "rr", Networks: []string{"app"}, Mode: cnm.ModeDNSRR})
	e.task(t, "rr1", "rr")
	e.task(t, "rr2", "rr")
	client := e.sandbox("client", "app")
	want := []string{e.addr("rr1", "app", false).String(), e.addr("rr2", "app", false).String()}
	slices.Sort(want)
	firsts := map[string]bool{}
	for range 4 {
		got := queryA(t, e, client, "rr")
		if len(got) != 2 {
			t.Fatalf("rr = %v, want both tasks", got)
		}
		firsts[got[0]] = true
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("rr = %v, want %v", got, want)
		}
	}
	if len(firsts) != 2 {
		t.Errorf("dnsrr answers do not rotate: first answers %v", firsts)
	}

	st := e.service(cnm.ServiceSpec{Name: "st", Networks: []string{"app"}, Sticky: 10 * time.Minute})
	for _, n := range []string{"st1", "st2", "st3"} {
		e.task(t, n, "st")
	}
	seen := map[string]int{}
	for range 100 {
		name, err := askName(client.Key, netip.AddrPortFrom(st.VIPs[0].Addr.Addr(), 80))
		if err != nil {
			t.Fatal(err)
		}
		seen[name]++
	}
	if len(seen) != 1 {
		t.Fatalf("sticky: 100 connections of one client went to %v", seen)
	}
}

// Rolling replacement under load: four clients drive ~200 requests/s at the VIP,
// each request taking 20 ms of the task's time (so removals meet requests in
// flight), while the three tasks are replaced one by one. Not one request may fail.
func TestServiceRollingReplacementLosesNothing(t *testing.T) {
	e := newEnv(t)
	e.network(cnm.NetworkSpec{Name: "app"})
	svc := e.service(cnm.ServiceSpec{Name: "web", Networks: []string{"app"}, Ports: []lb.Port{{Proto: "tcp", Port: 80}}, StopGrace: 5 * time.Second})
	const work = 20 * time.Millisecond
	for _, n := range []string{"old1", "old2", "old3"} {
		e.taskWorking(t, n, "web", work)
	}
	client := e.sandbox("client", "app")
	vip := netip.AddrPortFrom(svc.VIPs[0].Addr.Addr(), 80)
	var ok, failed atomic.Int64
	var mu sync.Mutex
	answered := map[string]int{}
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			tick := time.NewTicker(20 * time.Millisecond) // 4 × 50/s
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				name, err := askName(client.Key, vip)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ok.Add(1)
				mu.Lock()
				answered[name]++
				mu.Unlock()
			}
		})
	}
	start := time.Now()
	for i, old := range []string{"old1", "old2", "old3"} {
		e.taskWorking(t, fmt.Sprintf("new%d", i+1), "web", work)
		// Let the load reach the new task before the next removal.
		awaitAnswers(t, &ok, 50)
		if err := e.s.Controller.DeleteSandbox(t.Context(), old, true); err != nil {
			t.Fatalf("removing %s: %v", old, err)
		}
	}
	during := ok.Load() + failed.Load()
	elapsed := time.Since(start)
	awaitAnswers(t, &ok, 50)
	close(stop)
	wg.Wait()
	t.Logf("replacement took %v with %d requests (%.0f/s); %d answered, %d failed in all; by task: %v",
		elapsed, during, float64(during)/elapsed.Seconds(), ok.Load(), failed.Load(), answered)
	if failed.Load() > 0 {
		t.Fatalf("%d of %d requests failed during the rolling replacement; first: %v", failed.Load(), failed.Load()+ok.Load(), firstErr.Load())
	}
	for _, n := range []string{"new1", "new2", "new3", "old1", "old2", "old3"} {
		if answered[n] == 0 {
			t.Errorf("task %s never answered: %v", n, answered)
		}
	}
}

// awaitAnswers waits until the load generators counted n more answers in ok (at most
// 20 s: a stalled load fails the test rather than hanging it).
func awaitAnswers(t *testing.T, ok *atomic.Int64, n int64) {
	t.Helper()
	want := ok.Load() + n
	if _, done := nstest.Poll(20*time.Second, func() bool { return ok.Load() >= want }); !done {
		t.Fatalf("the load stalled: %d answers, waiting for %d", ok.Load(), want)
	}
}

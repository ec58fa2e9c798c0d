package ingress

import (
	"errors"
	"net"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

func webService(m *mesh, snat bool) Service {
	return Service{ID: "web", Ports: []Port{{"tcp", 8080, 80}, {"udp", 8080, 80}}, Backends: taskAddrs, SNAT: snat}
}

// Every router forwards to both tasks; each task sees the client's real address and
// its replies go back through the router that forwarded the connection. Without a
// Return in the tasks the same connections fail.
func TestMeshKeepsTheClientAddress(t *testing.T) {
	m := newMesh(t)
	m.setAll(t, webService(m, false))
	// Negative control first: no Return, replies take the dead-end default route.
	if a, err := m.ask(t, "tcp", routerAddrs[0]+":8080", time.Second); err == nil {
		t.Fatalf("without Return a connection through R1 worked (answered by %v): the test cannot see a broken Return", a)
	}
	rets := m.returns(t)
	for _, proto := range []string{"tcp", "udp"} {
		for _, r := range routerAddrs {
			got := m.spread(t, proto, r+":8080", 200, clientAddr)
			// p = 1/2 each: mean 100, sd 7.1; 60 is 5.6 sd below.
			if got["t1"] < 60 || got["t2"] < 60 {
				t.Errorf("%s via %s: %v, want both tasks ≥ 60 of 200", proto, r, got)
			}
			t.Logf("%s via %s: %v", proto, r, got)
		}
	}
	for _, r := range rets {
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.ask(t, "tcp", routerAddrs[1]+":8080", time.Second); err == nil {
		t.Fatal("after Return.Close a connection through R2 still worked")
	}
}

// With SNAT the task sees the router's ingress address, and no Return is needed.
func TestMeshSNAT(t *testing.T) {
	m := newMesh(t)
	m.setAll(t, webService(m, true))
	for i, r := range routerAddrs {
		for _, proto := range []string{"tcp", "udp"} {
			got := m.spread(t, proto, r+":8080", 20, m.rts[i].Addr)
			if got["t1"] == 0 || got["t2"] == 0 {
				t.Errorf("%s via %s with SNAT: %v", proto, r, got)
			}
		}
	}
	// Back to no SNAT: new connections keep the client's address (a rule change).
	m.setAll(t, webService(m, false))
	m.returns(t)
	m.spread(t, "tcp", routerAddrs[0]+":8080", 10, clientAddr)
}

// A changed backend list moves new connections; no backend refuses at once.
func TestMeshBackendChangeAndRefusal(t *testing.T) {
	m := newMesh(t)
	m.returns(t)
	s := webService(m, false)
	m.setAll(t, s)
	s.Backends = taskAddrs[1:]
	m.setAll(t, s)
	// t1 had 32 of the 64 slots of each of the two published ports (tcp and udp 8080):
	// the batch rewrote those (delete and add), no rule.
	if c := m.counts[0]; c.elems != 2*2*32 || c.rules != 0 {
		t.Fatalf("the backend change touched %d elements and %d rules, want 128 and 0", c.elems, c.rules)
	}
	for _, proto := range []string{"tcp", "udp"} {
		if got := m.spread(t, proto, routerAddrs[0]+":8080", 40, clientAddr); got["t2"] != 40 {
			t.Fatalf("%s after Set with only t2: %v", proto, got)
		}
	}
	s.Backends = nil
	if err := m.pubs[0].Set(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := m.ask(t, "tcp", routerAddrs[0]+":8080", 2*time.Second)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("no backend: got %v, want connection refused", err)
	}
	t.Logf("refused after %v", time.Since(start))
	if _, err := m.ask(t, "udp", routerAddrs[0]+":8080", 2*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("no backend, UDP: got %v, want connection refused (ICMP port unreachable)", err)
	}
	// Positive control beside it: R2 still has t2.
	m.spread(t, "tcp", routerAddrs[1]+":8080", 5, clientAddr)
	if err := m.pubs[0].Remove(t.Context(), "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ask(t, "tcp", routerAddrs[0]+":8080", time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("removed service: got %v, want refused by R1 itself (nothing listens)", err)
	}
}

// After `nft flush ruleset` Intact reports false and Rewrite heals the table.
func TestMeshHealsAfterFlushRuleset(t *testing.T) {
	nstest.Require(t, "nft")
	m := newMesh(t)
	rets := m.returns(t)
	m.setAll(t, webService(m, false))
	p := m.pubs[0]
	if ok, err := p.Intact(t.Context()); err != nil || !ok {
		t.Fatalf("freshly programmed table: intact %v, %v", ok, err)
	}
	if out, err := exec.Command("nsenter", "--net="+m.routers[0].Path, "nft", "flush", "ruleset").CombinedOutput(); err != nil {
		t.Fatalf("nft flush ruleset: %v\n%s", err, out)
	}
	if _, err := m.ask(t, "tcp", routerAddrs[0]+":8080", time.Second); err == nil {
		t.Fatal("R1 still forwards after its ruleset was flushed")
	}
	if ok, err := p.Intact(t.Context()); err != nil || ok {
		t.Fatalf("after nft flush ruleset: intact %v, %v; want false", ok, err)
	}
	if err := p.Rewrite(t.Context()); err != nil {
		t.Fatal(err)
	}
	if ok, err := p.Intact(t.Context()); err != nil || !ok {
		t.Fatalf("after Rewrite: intact %v, %v", ok, err)
	}
	m.spread(t, "tcp", routerAddrs[0]+":8080", 20, clientAddr)
	m.spread(t, "udp", routerAddrs[0]+":8080", 20, clientAddr)
	// The same in a task: its replies go astray until its Return is rewritten.
	if ok, err := rets[0].Intact(t.Context()); err != nil || !ok {
		t.Fatalf("task's Return: intact %v, %v", ok, err)
	}
	if out, err := exec.Command("nsenter", "--net="+m.tasks[0].Path, "nft", "flush", "ruleset").CombinedOutput(); err != nil {
		t.Fatalf("nft flush ruleset: %v\n%s", err, out)
	}
	if ok, err := rets[0].Intact(t.Context()); err != nil || ok {
		t.Fatalf("task's Return after nft flush ruleset: intact %v, %v; want false", ok, err)
	}
	if err := rets[0].Rewrite(t.Context()); err != nil {
		t.Fatal(err)
	}
	if ok, err := rets[0].Intact(t.Context()); err != nil || !ok {
		t.Fatalf("task's Return after Rewrite: intact %v, %v", ok, err)
	}
	if got := m.spread(t, "tcp", routerAddrs[1]+":8080", 40, clientAddr); got["t1"] == 0 {
		t.Fatalf("t1 after its Return was rewritten: %v", got)
	}
	// A change after the heal is incremental again and lands.
	s := webService(m, false)
	s.Backends = taskAddrs[:1]
	if err := p.Set(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	if got := m.spread(t, "tcp", routerAddrs[0]+":8080", 20, clientAddr); got["t1"] != 20 {
		t.Fatalf("after the change: %v", got)
	}
}

// Close removes every table, rule, ip rule and route the package made, and restores
// rp_filter.
func TestMeshCloseRemovesEverything(t *testing.T) {
	nstest.Require(t, "nft")
	m := newMesh(t)
	tk := m.tasks[0]
	rpBefore := sysctlIn(t, tk, rpFilterKey("eth0"))
	rulesBefore := ipRules(t, tk)
	rets := m.returns(t)
	m.setAll(t, webService(m, true))
	if got := sysctlIn(t, tk, rpFilterKey("eth0")); got != "2" {
		t.Fatalf("rp_filter on eth0 with a Return: %s, want 2", got)
	}
	if n := len(ipRules(t, tk)) - len(rulesBefore); n != 2 {
		t.Fatalf("%d ip rules added for 2 routers", n)
	}
	for _, p := range m.pubs {
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	for _, r := range rets {
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range append(slices.Clone(m.routers), m.tasks...) {
		out, err := exec.Command("nsenter", "--net="+ns.Path, "nft", "list", "ruleset").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "" {
			t.Errorf("nft list ruleset in %s after Close: %v\n%s", ns.Path, err, out)
		}
	}
	if got := ipRules(t, tk); !slices.Equal(got, rulesBefore) {
		t.Errorf("ip rules after Close: %v, before: %v", got, rulesBefore)
	}
	for k := 1; k <= 2; k++ {
		routes, err := tk.NL.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: ReturnTableBase + k}, netlink.RT_FILTER_TABLE)
		if err != nil || len(routes) != 0 {
			t.Errorf("table %d after Close: %v, %v", ReturnTableBase+k, routes, err)
		}
	}
	if got := sysctlIn(t, tk, rpFilterKey("eth0")); got != rpBefore {
		t.Errorf("rp_filter after Close: %s, before: %s", got, rpBefore)
	}
}

func sysctlIn(t *testing.T, ns *netns.Namespace, key string) string {
	t.Helper()
	v, err := swapSysctl(ns, key, "")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func ipRules(t *testing.T, ns *netns.Namespace) []string {
	t.Helper()
	rules, err := ns.NL.RuleList(unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rules {
		out = append(out, r.String())
	}
	slices.Sort(out)
	return out
}

// One UDP socket keeps its flow (conntrack); removing its backend moves it at once
// (the flow's conntrack entry is deleted).
func TestMeshUDPFlowMovesWithItsBackend(t *testing.T) {
	m := newMesh(t)
	m.returns(t)
	s := webService(m, false)
	m.setAll(t, s)
	var c net.Conn
	var err error
	nstest.Do(t, m.client.Handle, func() { c, err = net.Dial("udp4", routerAddrs[0]+":8080") })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ask := func() string {
		t.Helper()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("?")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("UDP answer: %v", err)
		}
		name, _, _ := strings.Cut(string(buf[:n]), " ")
		return name
	}
	first := ask()
	for range 5 {
		if got := ask(); got != first {
			t.Fatalf("one UDP flow answered by %s then %s", first, got)
		}
	}
	other := map[string]int{"t1": 1, "t2": 0}[first]
	s.Backends = taskAddrs[other : other+1]
	m.setAll(t, s)
	if got := ask(); got != taskNames[other] {
		t.Fatalf("after removing %s the flow is answered by %q, want %s (stale conntrack entry)", first, got, taskNames[other])
	}
}

// A rewrite of 1,000 services (64,000 slot elements) is one batch the kernel takes:
// elements go in messages of at most maxElems, and the rules are fixed, so nothing
// is validated per service.
func TestRewriteOfAThousandServices(t *testing.T) {
	p, err := New(t.Context(), Options{NetNS: nstest.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := range 1000 {
		if err := p.Set(t.Context(), svcN(i, 10)); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if err := p.Rewrite(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Logf("rewrite of 1,000 services: %v", time.Since(start))
	if ok, err := p.Intact(t.Context()); err != nil || !ok {
		t.Fatalf("after the rewrite: intact %v, %v", ok, err)
	}
}

package ingress

import (
	"errors"
	"syscall"
	"testing"
	"time"
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

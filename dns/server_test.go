package dns

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/nstest"
)

func TestSandboxLifecycleErrors(t *testing.T) {
	s := New(Options{})
	cfg := SandboxConfig{ID: "sb", Key: "/nonexistent/netns"}
	if err := s.AddSandbox(t.Context(), cfg); !errdefs.Is(err, errdefs.KindUnavailable) {
		t.Fatalf("AddSandbox before Start: %v, want unavailable", err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSandbox(t.Context(), SandboxConfig{ID: "sb"}); !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Fatalf("AddSandbox without a namespace: %v, want invalid argument", err)
	}
	if err := s.AddSandbox(t.Context(), cfg); err == nil {
		t.Fatal("AddSandbox with a missing namespace succeeded")
	}
	if err := s.UpdateSandbox(cfg); !errdefs.Is(err, errdefs.KindNotFound) {
		t.Fatalf("UpdateSandbox of an unknown sandbox: %v, want not found", err)
	}
	if err := s.RemoveSandbox("nope"); err != nil {
		t.Fatalf("RemoveSandbox of an unknown sandbox: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Start(t.Context()); !errdefs.Is(err, errdefs.KindUnavailable) {
		t.Fatalf("Start after Close: %v", err)
	}
}

func TestStartContextClosesServer(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	s := New(Options{})
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	nstest.Eventually(t, "the server to close", 5*time.Second, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.closed
	})
}

func TestSandboxConfigNormalized(t *testing.T) {
	c := newConfig(SandboxConfig{
		ID:        "sb",
		Search:    []string{"Corp.Example.", "", "."},
		Upstreams: ups(netip.MustParseAddrPort("[::ffff:192.0.2.1]:0"), netip.MustParseAddrPort("192.0.2.1:53"), netip.AddrPort{}),
	}, nil, 0)
	if len(c.search) != 1 || c.search[0] != "corp.example" {
		t.Errorf("search = %q", c.search)
	}
	if len(c.upstreams) != 1 || c.upstreams[0].addr.String() != "192.0.2.1:53" {
		t.Errorf("upstreams = %v", c.upstreams)
	}
}

func TestCacheHitAllocatesNothing(t *testing.T) {
	sb, pkt := cachedSandbox(t)
	if m := unpack(t, sb.ask(pkt, false)); !m.RecursionAvailable || len(m.Answer) != 1 {
		t.Fatalf("cached reply %s: want one answer and RA", m)
	}
	sc, out := newScratch(), make([]byte, 0, maxUDPReply)
	allocs := testing.AllocsPerRun(1000, func() {
		if _, act := sb.handle(out[:0], pkt, 0, sc); act != actReply {
			t.Fatal("not answered from the cache")
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per cache hit, budget 0", allocs)
	}
}

// TestConcurrentChangesAndQueries exercises the registry, cache and view
// rebuilds under the race detector.
func TestConcurrentChangesAndQueries(t *testing.T) {
	s := newTestServer(t, Options{})
	world(s)
	f := newFakeUpstreams()
	up := f.handle("192.0.2.1:53", answerA("203.0.113.1", 1))
	client := fakeSandbox(t, s, SandboxConfig{ID: "sb-client", Upstreams: ups(up)}, f)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				name := fmt.Sprintf("n%d-%d", w, i%7)
				s.Upsert(Record{NetworkID: "n1", NetworkName: "frontend", EndpointID: name, SandboxID: name,
					Names: []string{name, "shared"}, Addr4: netip.AddrFrom4([4]byte{10, byte(w), 0, byte(i)})})
				for _, q := range []string{name + ".", "shared.", fmt.Sprintf("ext%d.example.", i%5)} {
					if err := new(mdns.Msg).Unpack(client.ask(pack(t, q, mdns.TypeA, 0), false)); err != nil {
						t.Errorf("%s: %v", q, err)
					}
				}
				if i%3 == 0 {
					s.Remove(name)
				}
			}
		})
	}
	wg.Wait()
}

// cachedSandbox returns a sandbox whose cache holds example.com A (from a fake
// upstream) and the query for it.
func cachedSandbox(t testing.TB) (*sandbox, []byte) {
	s := newTestServer(t, Options{})
	f := newFakeUpstreams()
	up := f.handle("192.0.2.1:53", answerA("203.0.113.1", 3600))
	sb := fakeSandbox(t, s, SandboxConfig{ID: "sb", Upstreams: ups(up)}, f)
	pkt := pack(t, "Example.com.", mdns.TypeA, 1232)
	sb.ask(pkt, false)
	return sb, pkt
}

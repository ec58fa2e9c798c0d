package dns

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

const stubConf = "nameserver 127.0.0.11\noptions ndots:0 timeout:5 attempts:1\n"

// discovery is two user networks: "front" (sandboxes A and C, both with the
// alias "api") and "back" (sandbox B, internal). A and B run resolvers.
type discovery struct {
	srv  *Server
	a, b *testNS
}

func newDiscovery(t testing.TB) *discovery {
	d := &discovery{a: newNS(t), b: newNS(t)}
	d.a.dummy(t, "172.30.0.2/24", "fd00:30::2/64")
	d.b.dummy(t, "172.31.0.2/24")
	d.srv = newTestServer(t, Options{})
	d.srv.Upsert(Record{NetworkID: "n-front", NetworkName: "front", EndpointID: "ep-a", SandboxID: "sb-a",
		Names: []string{"web", "api", "aaaaaaaaaaaa"}, Addr4: addr("172.30.0.2"), Addr6: addr("fd00:30::2")})
	d.srv.Upsert(Record{NetworkID: "n-front", NetworkName: "front", EndpointID: "ep-c", SandboxID: "sb-c",
		Names: []string{"cache", "api"}, Addr4: addr("172.30.0.3")})
	d.srv.Upsert(Record{NetworkID: "n-back", NetworkName: "back", EndpointID: "ep-b", SandboxID: "sb-b",
		Names: []string{"db"}, Addr4: addr("172.31.0.2")})
	for _, sb := range []SandboxConfig{{ID: "sb-a", Key: d.a.path, Search: []string{"corp.example"}}, {ID: "sb-b", Key: d.b.path, Internal: true}} {
		if err := d.srv.AddSandbox(t.Context(), sb); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func TestGlibcResolvesSandboxNames(t *testing.T) {
	d := newDiscovery(t)
	for _, tt := range []struct{ name, want string }{
		{"web", "172.30.0.2"}, {"WEB", "172.30.0.2"}, {"web.front", "172.30.0.2"},
		{"aaaaaaaaaaaa", "172.30.0.2"}, {"cache.", "172.30.0.3"},
	} {
		out, err := d.a.getent(t, stubConf, "ahostsv4", tt.name)
		if err != nil || !strings.HasPrefix(out, tt.want+" ") {
			t.Errorf("getent ahostsv4 %s = %q, %v; want %s", tt.name, out, err, tt.want)
		}
	}
	out, err := d.a.getent(t, stubConf, "ahostsv4", "api")
	if err != nil || !strings.Contains(out, "172.30.0.2") || !strings.Contains(out, "172.30.0.3") {
		t.Errorf("getent ahostsv4 api = %q, %v; want both sandboxes", out, err)
	}
	out, err = d.a.getent(t, stubConf, "ahostsv6", "web")
	if err != nil || !strings.HasPrefix(out, "fd00:30::2 ") {
		t.Errorf("getent ahostsv6 web = %q, %v", out, err)
	}
	out, err = d.a.getent(t, stubConf, "hosts", "172.30.0.2")
	if err != nil || strings.TrimSpace(out) != "172.30.0.2      web.front" {
		t.Errorf("getent hosts 172.30.0.2 = %q, %v", out, err)
	}
	// The search domain is stripped when the rest is a local name.
	out, err = d.a.getent(t, "nameserver 127.0.0.11\nsearch corp.example\noptions ndots:1\n", "ahostsv4", "web.corp.example")
	if err != nil || !strings.HasPrefix(out, "172.30.0.2 ") {
		t.Errorf("getent with search domain = %q, %v", out, err)
	}
	// TCP only (options use-vc): glibc sends every query over TCP.
	out, err = d.a.getent(t, stubConf+"options use-vc\n", "ahostsv4", "web")
	if err != nil || !strings.HasPrefix(out, "172.30.0.2 ") {
		t.Errorf("getent over TCP = %q, %v", out, err)
	}
}

func TestNamesAreScopedToNetworks(t *testing.T) {
	d := newDiscovery(t)
	if out, err := d.b.getent(t, stubConf, "ahostsv4", "web"); err == nil {
		t.Errorf("sandbox on another network resolved web: %q", out)
	}
	out, _ := d.b.nslookup(t, "web")
	if !strings.Contains(out, "NXDOMAIN") {
		t.Errorf("busybox nslookup web from the back network: %q, want NXDOMAIN", out)
	}
	_, err := d.b.resolver().LookupHost(t.Context(), "web")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Errorf("Go resolver from the back network: %v, want not found", err)
	}
	if addrs, err := d.b.resolver().LookupHost(t.Context(), "db"); err != nil || !slices.Equal(addrs, []string{"172.31.0.2"}) {
		t.Errorf("Go resolver db = %v, %v", addrs, err)
	}
}

func TestBusyboxSeesAliasesRotate(t *testing.T) {
	d := newDiscovery(t)
	firsts := map[string]bool{}
	for range 4 {
		out, err := d.a.nslookup(t, "-type=a", "api")
		if err != nil {
			t.Fatalf("nslookup api: %v\n%s", err, out)
		}
		addrs := nslookupAddrs(out)
		if len(addrs) != 2 {
			t.Fatalf("nslookup api answered %v, want both sandboxes\n%s", addrs, out)
		}
		firsts[addrs[0]] = true
	}
	if len(firsts) != 2 {
		t.Fatalf("first address never changed: %v", firsts)
	}
	out, err := d.a.nslookup(t, "172.30.0.3")
	if err != nil || !strings.Contains(out, "name = cache.front") {
		t.Fatalf("busybox reverse lookup: %q, %v", out, err)
	}
}

// nslookupAddrs returns the addresses in busybox nslookup's answer section.
func nslookupAddrs(out string) []string {
	var addrs []string
	for _, line := range strings.Split(out, "\n") {
		if a, ok := strings.CutPrefix(strings.TrimSpace(line), "Address: "); ok && !strings.Contains(a, "#") {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

func TestGoResolverAndImmediateUpdates(t *testing.T) {
	d := newDiscovery(t)
	r := d.a.resolver()
	ctx := t.Context()
	if ips, err := r.LookupIP(ctx, "ip6", "web"); err != nil || len(ips) != 1 || ips[0].String() != "fd00:30::2" {
		t.Errorf("LookupIP ip6 web = %v, %v", ips, err)
	}
	if ips, err := r.LookupIP(ctx, "ip6", "cache"); err == nil || len(ips) != 0 {
		t.Errorf("LookupIP ip6 cache (no IPv6) = %v, %v; want no addresses", ips, err)
	}
	if names, err := r.LookupAddr(ctx, "fd00:30::2"); err != nil || !slices.Equal(names, []string{"web.front."}) {
		t.Errorf("LookupAddr fd00:30::2 = %v, %v", names, err)
	}
	d.srv.Upsert(Record{NetworkID: "n-front", NetworkName: "front", EndpointID: "ep-late", SandboxID: "sb-late",
		Names: []string{"late"}, Addr4: addr("172.30.0.9")})
	if addrs, err := r.LookupHost(ctx, "late"); err != nil || !slices.Equal(addrs, []string{"172.30.0.9"}) {
		t.Errorf("right after Upsert: %v, %v", addrs, err)
	}
	d.srv.Remove("ep-late")
	if addrs, err := r.LookupHost(ctx, "late"); err == nil {
		t.Errorf("right after Remove: %v", addrs)
	}
	m, _ := d.a.exchange(t, "tcp", "web.", mdns.TypeA)
	if len(m.Answer) != 1 {
		t.Errorf("TCP query: %s", m)
	}
}

// upstreamWorld is a sandbox wired to an upstream namespace running testUpstream
// at 198.51.100.53; 203.0.113.99 is routed there and silently dropped. The
// upstream is reachable only from inside the sandbox's namespace, so every
// forwarded answer also proves the upstream socket was created there.
type upstreamWorld struct {
	srv *Server
	sb  *testNS
	up  *testUpstream
}

func newUpstreamWorld(t testing.TB, cfg SandboxConfig, opts Options) *upstreamWorld {
	sbNS, upNS := newNS(t), newNS(t)
	wire(t, sbNS, "eth0", "198.51.100.2/24", upNS, "up0", "198.51.100.53/24")
	sbNS.defaultRoute(t, "198.51.100.53")
	w := &upstreamWorld{srv: newTestServer(t, opts), sb: sbNS, up: startUpstream(t, upNS, "198.51.100.53")}
	w.srv.Upsert(Record{NetworkID: "n1", NetworkName: "net1", EndpointID: "ep1", SandboxID: "sb1",
		Names: []string{"web"}, Addr4: addr("172.30.0.2")})
	cfg.ID, cfg.Key = "sb1", sbNS.path
	if err := w.srv.AddSandbox(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	return w
}

var upstream53 = []netip.AddrPort{netip.MustParseAddrPort("198.51.100.53:53")}

func TestForwardingAndCache(t *testing.T) {
	w := newUpstreamWorld(t, SandboxConfig{Upstreams: upstream53}, Options{})
	out, err := w.sb.getent(t, stubConf, "ahostsv4", "example.test")
	if err != nil || !strings.HasPrefix(out, "203.0.113.7 ") {
		t.Fatalf("getent example.test = %q, %v", out, err)
	}
	out, err = w.sb.nslookup(t, "-type=a", "example.test")
	if err != nil || !slices.Equal(nslookupAddrs(out), []string{"203.0.113.7"}) {
		t.Fatalf("nslookup example.test = %q, %v", out, err)
	}
	if addrs, err := w.sb.resolver().LookupHost(t.Context(), "example.test"); err != nil || !slices.Contains(addrs, "203.0.113.7") {
		t.Fatalf("Go LookupHost example.test = %v, %v", addrs, err)
	}
	if n := w.up.count("example.test.", mdns.TypeA, ""); n != 1 {
		t.Fatalf("upstream saw %d A queries for example.test, want 1 (then cache hits)", n)
	}
	out, _ = w.sb.nslookup(t, "-type=a", "nosuch.test")
	out2, _ := w.sb.nslookup(t, "-type=a", "nosuch.test")
	if !strings.Contains(out, "NXDOMAIN") || !strings.Contains(out2, "NXDOMAIN") {
		t.Fatalf("unknown name: %q", out)
	}
	if n := w.up.count("nosuch.test.", mdns.TypeA, ""); n != 1 {
		t.Fatalf("upstream saw %d queries for nosuch.test, want 1 (negative cache)", n)
	}
	if addrs, err := w.sb.resolver().LookupHost(t.Context(), "web"); err != nil || !slices.Equal(addrs, []string{"172.30.0.2"}) {
		t.Fatalf("local name beside forwarding: %v, %v", addrs, err)
	}
	if n := w.up.count("web.", mdns.TypeA, ""); n != 0 {
		t.Fatalf("local name leaked upstream %d times", n)
	}
}

func TestTruncatedAnswersRetryOverTCP(t *testing.T) {
	w := newUpstreamWorld(t, SandboxConfig{Upstreams: upstream53}, Options{})
	// 100 A records do not fit 512 bytes: glibc gets TC and retries over TCP.
	out, err := w.sb.getent(t, stubConf, "ahostsv4", "many.test")
	if err != nil || strings.Count(out, "STREAM") != 100 {
		t.Fatalf("getent many.test: %d addresses, %v", strings.Count(out, "STREAM"), err)
	}
	if w.up.count("many.test.", mdns.TypeA, "tcp") == 0 {
		t.Fatal("the upstream never saw a TCP query for many.test")
	}
	txts, err := w.sb.resolver().LookupTXT(t.Context(), "big.test")
	if err != nil || len(txts) != 10 {
		t.Fatalf("Go LookupTXT big.test = %d records, %v", len(txts), err)
	}
	m, _ := w.sb.exchange(t, "udp", "big.test.", mdns.TypeTXT)
	if !m.Truncated {
		t.Fatal("UDP reply for 2 KB of TXT is not truncated")
	}
}

func TestUnreachableUpstreamIsServfailWithin2s(t *testing.T) {
	blackhole := []netip.AddrPort{netip.MustParseAddrPort("203.0.113.99:53")}
	w := newUpstreamWorld(t, SandboxConfig{Upstreams: blackhole}, Options{})
	start := time.Now()
	m, _ := w.sb.exchange(t, "udp", "example.test.", mdns.TypeA)
	if m.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("rcode %s, want SERVFAIL", mdns.RcodeToString[m.Rcode])
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("SERVFAIL after %v, want within 2s", d)
	}
	// A second, working upstream takes over at once.
	cfg := SandboxConfig{ID: "sb1", Key: w.sb.path, Upstreams: append(blackhole, upstream53...)}
	if err := w.srv.UpdateSandbox(cfg); err != nil {
		t.Fatal(err)
	}
	if m, rtt := w.sb.exchange(t, "udp", "example.test.", mdns.TypeA); len(m.Answer) != 1 || rtt > time.Second {
		t.Fatalf("with a working upstream: %s after %v", m, rtt)
	}
}

func TestInternalSandboxDoesNotForward(t *testing.T) {
	w := newUpstreamWorld(t, SandboxConfig{Upstreams: upstream53, Internal: true}, Options{})
	out, _ := w.sb.nslookup(t, "example.test")
	if !strings.Contains(out, "NXDOMAIN") {
		t.Fatalf("internal sandbox: %q, want NXDOMAIN", out)
	}
	if out, err := w.sb.getent(t, stubConf, "ahostsv4", "web"); err != nil || !strings.HasPrefix(out, "172.30.0.2 ") {
		t.Fatalf("internal sandbox, local name: %q, %v", out, err)
	}
	if n := w.up.total(); n != 0 {
		t.Fatalf("upstream saw %d queries from an internal sandbox", n)
	}
}

func TestRemoveSandboxFreesTheAddress(t *testing.T) {
	w := newUpstreamWorld(t, SandboxConfig{Upstreams: upstream53}, Options{})
	if hostListens(t) {
		t.Fatal("something listens on 127.0.0.11:53 in the host namespace")
	}
	if err := w.srv.RemoveSandbox("sb1"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.sb.resolver().LookupHost(t.Context(), "web"); err == nil {
		t.Fatal("still answering after RemoveSandbox")
	}
	if err := w.srv.AddSandbox(t.Context(), SandboxConfig{ID: "sb1", Key: w.sb.path}); err != nil {
		t.Fatalf("adding the sandbox again: %v", err)
	}
	if addrs, err := w.sb.resolver().LookupHost(t.Context(), "web"); err != nil || len(addrs) != 1 {
		t.Fatalf("after re-adding: %v, %v", addrs, err)
	}
	if err := w.srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.srv.AddSandbox(t.Context(), SandboxConfig{ID: "sb2", Key: w.sb.path}); err == nil {
		t.Fatal("AddSandbox after Close succeeded")
	}
}

// hostListens reports whether the test's own namespace has a socket on
// 127.0.0.11:53 (read from /proc; nothing is bound or sent).
func hostListens(t *testing.T) bool {
	for _, f := range []string{"/proc/self/net/udp", "/proc/self/net/tcp"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), " 0B00007F:0035 ") {
			return true
		}
	}
	return false
}

package dns

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/piernet/pier/internal/nstest"
)

// Performance of the local-answer path, three ways:
//
//   - BenchmarkHandle*: the in-process cost of one answer (no sockets).
//   - BenchmarkUDPLocal: Go clients in the test process, through real sockets
//     inside a sandbox namespace, one query outstanding each.
//   - BenchmarkDNSPerf and BenchmarkLatency: dnsperf, and our load generator
//     (a separate process, for p50/p99), run inside the sandbox against
//     127.0.0.11, each beside the same run against dnsmasq (Debian's) serving
//     the same names at 127.0.0.12 in the same namespace: the baseline.
//
// Run: go test -run '^$' -bench . -benchtime 1x ./dns/ (as root; each
// dnsperf/load-generator sub-benchmark is one fixed-length run).

func BenchmarkHandleLocal(b *testing.B) {
	s := newTestServer(b, Options{})
	world(s)
	sb := fakeSandbox(b, s, SandboxConfig{ID: "sb-client", Internal: true}, nil)
	pkt, sc, out := pack(b, "api.", mdns.TypeA, 1232), newScratch(), make([]byte, 0, maxUDPReply)
	b.ReportAllocs()
	for b.Loop() {
		if _, act := sb.handle(out[:0], pkt, 0, sc); act != actReply {
			b.Fatal("not answered locally")
		}
	}
}

func BenchmarkHandleCacheHit(b *testing.B) {
	sb, pkt := cachedSandbox(b)
	sc, out := newScratch(), make([]byte, 0, maxUDPReply)
	b.ReportAllocs()
	for b.Loop() {
		if _, act := sb.handle(out[:0], pkt, 0, sc); act != actReply {
			b.Fatal("not answered from the cache")
		}
	}
}

// BenchmarkUDPLocal: ns/op is the time per query with GOMAXPROCS clients
// each keeping one query outstanding (client and server share the CPUs).
func BenchmarkUDPLocal(b *testing.B) {
	w := perfWorld(b)
	pkt := pack(b, "svc7.", mdns.TypeA, 0)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		conn, err := w.sb.dial(b.Context(), "udp")
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		buf := make([]byte, 512)
		for pb.Next() {
			if _, err := conn.Write(pkt); err != nil {
				b.Error(err)
				return
			}
			if n, err := conn.Read(buf); err != nil || n < headerLen {
				b.Errorf("reading reply: %v", err)
				return
			}
		}
	})
}

const baselineAddr = "127.0.0.12"

// perfWorld is a sandbox with a resolver, 100 local names (svc0…svc99) and an
// upstream serving example.test, for load generators run inside the sandbox.
func perfWorld(b *testing.B) *upstreamWorld {
	w := newUpstreamWorld(b, SandboxConfig{Upstreams: upstream53}, Options{})
	for i := range 100 {
		w.srv.Upsert(Record{NetworkID: "n1", NetworkName: "net1", EndpointID: fmt.Sprint("svc-ep", i), SandboxID: fmt.Sprint("svc-sb", i),
			Names: []string{fmt.Sprint("svc", i)}, Addr4: svcAddr(i)})
	}
	return w
}

func svcAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{172, 30, 1, byte(i)}) }

// localNames are the query lines for svc0…svc99 in dnsperf's format.
func localNames() []string {
	names := make([]string, 100)
	for i := range names {
		names[i] = fmt.Sprintf("svc%d A", i)
	}
	return names
}

// startBaseline runs dnsmasq at 127.0.0.12 inside the sandbox, serving the
// same 100 names from a hosts file, and waits until it answers.
func startBaseline(b *testing.B, n *testNS) {
	nstest.Require(b, "dnsmasq")
	dir := b.TempDir()
	var hosts strings.Builder
	for i := range 100 {
		fmt.Fprintf(&hosts, "%s svc%d\n", svcAddr(i), i)
	}
	hostsFile := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hostsFile, []byte(hosts.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net="+n.path, "--", "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
		"--addn-hosts="+hostsFile, "--listen-address="+baselineAddr, "--bind-interfaces", "--port=53", "--user=root",
		"--pid-file="+filepath.Join(dir, "pid"), "--log-facility="+filepath.Join(dir, "log"))
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	nstest.Eventually(b, "svc1 to resolve", 5*time.Second, func() bool {
		out, err := n.run(b, "nsenter", "--net="+n.path, "--", "busybox", "nslookup", "-type=a", "svc1", baselineAddr)
		return err == nil && strings.Contains(out, "172.30.1.1")
	})
}

// BenchmarkDNSPerf runs dnsperf inside the sandbox: local names and a cached
// upstream name against pier, and the same local names against dnsmasq.
func BenchmarkDNSPerf(b *testing.B) {
	nstest.Require(b, "nsenter", "dnsperf", "busybox")
	w := perfWorld(b)
	startBaseline(b, w.sb)
	for _, tt := range []struct {
		name, server string
		lines        []string
	}{
		{"pier/local", ListenAddr.Addr().String(), localNames()},
		{"pier/cached", ListenAddr.Addr().String(), []string{"example.test A"}},
		{"dnsmasq/local", baselineAddr, localNames()},
	} {
		b.Run(tt.name, func(b *testing.B) {
			r := runDNSPerf(b, w.sb, tt.server, tt.lines, 5, "-T", "2", "-c", "8", "-q", "100")
			b.ReportMetric(r.qps, "queries/s")
			b.ReportMetric(r.avgLatency*1e6, "avg-µs")
			b.ReportMetric(float64(r.lost), "lost")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkLatency runs our load generator inside the sandbox with growing
// numbers of outstanding queries, against pier and against dnsmasq.
func BenchmarkLatency(b *testing.B) {
	nstest.Require(b, "nsenter", "busybox")
	w := perfWorld(b)
	startBaseline(b, w.sb)
	for _, server := range []struct{ name, addr string }{{"pier", ListenAddr.Addr().String()}, {"dnsmasq", baselineAddr}} {
		for _, load := range []struct{ conns, window int }{{1, 1}, {2, 4}, {2, 16}, {4, 32}} {
			b.Run(fmt.Sprintf("%s/outstanding=%d", server.name, load.conns*load.window), func(b *testing.B) {
				r := runLoadgen(b, w.sb, server.addr+":53", localNames(), load.conns, load.window, 3*time.Second)
				b.ReportMetric(r.qps, "queries/s")
				b.ReportMetric(float64(r.p50.Microseconds()), "p50-µs")
				b.ReportMetric(float64(r.p99.Microseconds()), "p99-µs")
				b.ReportMetric(float64(r.lost), "lost")
				b.ReportMetric(0, "ns/op")
			})
		}
	}
}

// dnsperfResult is what dnsperf prints at the end of a run.
type dnsperfResult struct {
	qps, avgLatency, maxLatency float64
	lost                        int
}

var (
	reQPS  = regexp.MustCompile(`Queries per second:\s+([\d.]+)`)
	reAvg  = regexp.MustCompile(`Average Latency \(s\):\s+([\d.]+) \(min [\d.]+, max ([\d.]+)\)`)
	reLost = regexp.MustCompile(`Queries lost:\s+(\d+)`)
)

func parseDNSPerf(out string) (dnsperfResult, error) {
	var r dnsperfResult
	q, a, l := reQPS.FindStringSubmatch(out), reAvg.FindStringSubmatch(out), reLost.FindStringSubmatch(out)
	if q == nil || a == nil || l == nil {
		return r, fmt.Errorf("unexpected dnsperf output:\n%s", out)
	}
	r.qps, _ = strconv.ParseFloat(q[1], 64)
	r.avgLatency, _ = strconv.ParseFloat(a[1], 64)
	r.maxLatency, _ = strconv.ParseFloat(a[2], 64)
	r.lost, _ = strconv.Atoi(l[1])
	return r, nil
}

// runDNSPerf runs dnsperf inside the namespace against server for secs seconds.
func runDNSPerf(b *testing.B, n *testNS, server string, lines []string, secs int, extra ...string) dnsperfResult {
	b.Helper()
	data := filepath.Join(b.TempDir(), "queries")
	if err := os.WriteFile(data, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	args := append([]string{"--net=" + n.path, "--", "dnsperf", "-s", server, "-d", data, "-l", strconv.Itoa(secs)}, extra...)
	out, err := exec.Command("nsenter", args...).CombinedOutput()
	if err != nil {
		b.Fatalf("dnsperf: %v\n%s", err, out)
	}
	r, err := parseDNSPerf(string(out))
	if err != nil {
		b.Fatal(err)
	}
	return r
}

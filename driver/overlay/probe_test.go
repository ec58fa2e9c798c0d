package overlay

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/piernet/pier/driver"
)

// recorder is a slog handler that keeps every record.
type recorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec.Clone())
	return nil
}

// outcomes are the records of finished probes (each ends with one carrying "node"),
// as "LEVEL node message".
func (r *recorder) outcomes() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range r.recs {
		rec.Attrs(func(a slog.Attr) bool {
			if a.Key == "node" {
				out = append(out, rec.Level.String()+" "+a.Value.String()+" "+rec.Message)
			}
			return true
		})
	}
	slices.Sort(out)
	return out
}

// waitOutcomes polls until n probes have finished.
func (r *recorder) waitOutcomes(t *testing.T, n int, within time.Duration) []string {
	t.Helper()
	for deadline := time.Now().Add(within); ; {
		got := r.outcomes()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d probes finished, want %d: %v", len(got), n, got)
		}
		time.Sleep(time.Millisecond) // polling with a deadline
	}
}

func probingDriver(t *testing.T, k *fakeKernel, rec *recorder) *Driver {
	d := New(Options{Kernel: k, Advertise: netip.MustParseAddr("192.0.2.1"), Logger: slog.New(rec),
		ProbeTunnel: true, ProbeWait: time.Millisecond})
	d.Start(t.Context())
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func remote(id, node, addr string) driver.Peer {
	a := netip.MustParsePrefix(addr)
	return driver.Peer{NetworkID: "net1", EndpointID: id, Node: netip.MustParseAddr(node), Addr4: a, MAC: deriveMAC(a.Addr(), id)}
}

func joinLocal(t *testing.T, d *Driver, eid, sandbox string) {
	t.Helper()
	ctx := t.Context()
	must(t, d.CreateNetwork(ctx, driver.NetworkConfig{ID: "net1", Name: "ov", VNIs: []uint32{4096}}))
	_, err := d.CreateEndpoint(ctx, driver.EndpointConfig{NetworkID: "net1", EndpointID: eid, Addr4: netip.MustParsePrefix("10.0.0.2/24")})
	must(t, err)
	_, err = d.Join(ctx, driver.JoinRequest{NetworkID: "net1", EndpointID: eid, SandboxKey: sandbox, IfName: "eth0"})
	must(t, err)
}

func TestTunnelProbeVerdicts(t *testing.T) {
	warning := "WARN 192.0.2.2 overlay network ov: TCP through the VXLAN tunnel to node 192.0.2.2 (underlay eth0) fails while ICMP works: " +
		"broken checksum offload on eth0? fix: ethtool -K eth0 tx-checksum-ip-generic off (or tx off)"
	for _, tc := range []struct {
		name, answers string
		want          string
		probes        []string
	}{
		{"tcp works", "icmp tcp", "DEBUG 192.0.2.2 tunnel probe: TCP and ICMP pass",
			[]string{"/sb1 10.0.0.5 icmp", "/sb1 10.0.0.5 tcp"}},
		{"only icmp works", "icmp", warning,
			[]string{"/sb1 10.0.0.5 icmp", "/sb1 10.0.0.5 tcp", "/sb1 10.0.0.5 tcp", "/sb1 10.0.0.5 tcp"}},
		{"peer down", "", "DEBUG 192.0.2.2 tunnel probe: no ICMP answer, not judging TCP",
			[]string{"/sb1 10.0.0.5 icmp", "/sb1 10.0.0.5 icmp", "/sb1 10.0.0.5 icmp"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, rec := newFakeKernel(), &recorder{}
			k.answers[netip.MustParseAddr("10.0.0.5")] = tc.answers
			d := probingDriver(t, k, rec)
			joinLocal(t, d, "local1aaaaaaaa", "")
			must(t, d.AddPeer(t.Context(), remote("r1", "192.0.2.2", "10.0.0.5/24"))) // no sandbox joined yet: nothing to probe from
			_, err := d.CreateEndpoint(t.Context(), driver.EndpointConfig{NetworkID: "net1", EndpointID: "local2aaaaaaaa"})
			must(t, err)
			_, err = d.Join(t.Context(), driver.JoinRequest{NetworkID: "net1", EndpointID: "local2aaaaaaaa", SandboxKey: "/sb1", IfName: "eth0"})
			must(t, err)
			got := rec.waitOutcomes(t, 1, 5*time.Second)
			must(t, d.Close())
			if diff := cmp.Diff([]string{tc.want}, got); diff != "" {
				t.Errorf("outcome (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.probes, k.probes); diff != "" {
				t.Errorf("probes sent (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTunnelProbeOncePerNode(t *testing.T) {
	ctx := t.Context()
	k, rec := newFakeKernel(), &recorder{}
	for _, a := range []string{"10.0.0.5", "10.0.0.6", "10.0.0.7"} {
		k.answers[netip.MustParseAddr(a)] = "icmp tcp"
	}
	d := probingDriver(t, k, rec)
	must(t, d.CreateNetwork(ctx, driver.NetworkConfig{ID: "net1", Name: "ov", VNIs: []uint32{4096}}))
	must(t, d.AddPeer(ctx, remote("r1", "192.0.2.2", "10.0.0.5/24")))
	joinLocal(t, d, "local1aaaaaaaa", "/sb1")
	rec.waitOutcomes(t, 1, 5*time.Second)
	// Another endpoint on a probed node, another local join, a rejoin: no new probe.
	must(t, d.AddPeer(ctx, remote("r2", "192.0.2.2", "10.0.0.6/24")))
	_, err := d.CreateEndpoint(ctx, driver.EndpointConfig{NetworkID: "net1", EndpointID: "local2aaaaaaaa"})
	must(t, err)
	_, err = d.Join(ctx, driver.JoinRequest{NetworkID: "net1", EndpointID: "local2aaaaaaaa", SandboxKey: "/sb2", IfName: "eth0"})
	must(t, err)
	// A new node is probed from a joined sandbox when its first endpoint appears.
	must(t, d.AddPeer(ctx, remote("r3", "192.0.2.3", "10.0.0.7/24")))
	got := rec.waitOutcomes(t, 2, 5*time.Second)
	must(t, d.Close())
	must(t, d.Close()) // idempotent
	want := []string{"DEBUG 192.0.2.2 tunnel probe: TCP and ICMP pass", "DEBUG 192.0.2.3 tunnel probe: TCP and ICMP pass"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	if n := len(k.probes); n != 4 || !strings.HasSuffix(k.probes[3], " 10.0.0.7 tcp") {
		t.Errorf("probes sent: %v, want 2 per node", k.probes)
	}
}

func TestTunnelProbeOffByDefault(t *testing.T) {
	d, k, nc := fakeDriver(t)
	must(t, d.AddPeer(t.Context(), remote("r1", "192.0.2.2", "10.0.0.5/24")))
	_, err := d.CreateEndpoint(t.Context(), driver.EndpointConfig{NetworkID: nc.ID, EndpointID: "local1aaaaaaaa"})
	must(t, err)
	_, err = d.Join(t.Context(), driver.JoinRequest{NetworkID: nc.ID, EndpointID: "local1aaaaaaaa", SandboxKey: "/sb1", IfName: "eth0"})
	must(t, err)
	d.Start(t.Context())
	must(t, d.Close())
	if len(k.probes) != 0 {
		t.Errorf("probes without the option: %v", k.probes)
	}
}

package firewall

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	vns "github.com/vishvananda/netns"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// The heal tests observe the watcher through the kernel: the table nft lists, TCP
// through a published port, and the table's handle. The kernel gives every table it
// creates the next handle of the namespace, and a heal rewrites pier's table by
// deleting and re-adding it in one batch, so the handle grows with each rewrite while
// element changes (pier's own SetPorts) leave it alone.

var tableHandleRE = regexp.MustCompile(`^table inet pier \{ # handle (\d+)\n`)

// tableHandle returns the kernel handle of pier's table.
func tableHandle(t *testing.T, ns vns.NsHandle) int {
	t.Helper()
	m := tableHandleRE.FindStringSubmatch(nft(t, ns, "-a", "list", "table", "inet", "pier"))
	if m == nil {
		t.Fatal("nft -a: no handle for table inet pier")
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// rewrites runs change and waits until the table is want again; it returns how many
// tables the kernel created meanwhile (handles used), for comparing with a control.
func rewrites(t *testing.T, ns vns.NsHandle, want, what string, change func()) int {
	t.Helper()
	before := tableHandle(t, ns)
	change()
	nstest.Eventually(t, what+": table restored", 10*time.Second, func() bool { return dumpNow(t, ns) == want })
	return tableHandle(t, ns) - before
}

// publishedLab is a host with pier0 (172.17.0.1/16), the web container 172.17.0.2
// serving TCP port 80 behind it, and an outside client that reaches the host at
// 203.0.113.1. goldenState publishes the web container's port 80 as 8080.
func publishedLab(t *testing.T) (host vns.NsHandle, outside *netns.Namespace) {
	t.Helper()
	l := netlab.New(t, netlab.Options{})
	l.Bridge("pier0", "172.17.0.1/16")
	web := l.Peer("vweb", "pier0", []string{"172.17.0.2/16"}, []string{"172.17.0.1"})
	serve(t, web, "172.17.0.2")
	outside = l.Uplink("uplink", []string{"203.0.113.1/24"}, []string{"203.0.113.2/24"})
	return l.Host.Handle, outside
}

// reachesPublishedPort reports whether TCP from outside to host port 8080 reaches the
// web container (which sees the client's own address), retrying for up to 5 s.
func reachesPublishedPort(t *testing.T, outside *netns.Namespace) bool {
	t.Helper()
	_, ok := nstest.Poll(5*time.Second, func() bool { return connectTo(t, outside, "203.0.113.1:8080") == "203.0.113.2" })
	return ok
}

// TestKernelSelfHeals breaks pier's table the ways other tools do and checks
// the watcher restores it exactly, and with it the published port; and that
// pier's own changes are not taken for foreign ones (they cause no rewrite).
func TestKernelSelfHeals(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	ns, outside := publishedLab(t)
	fw, err := New(ctx, Options{NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw.Close() })
	applyGolden(t, fw)
	if err := fw.Start(ctx); err != nil {
		t.Fatal(err)
	}
	want := Render(goldenState())
	if !reachesPublishedPort(t, outside) {
		t.Fatal("published port unreachable before any change; the lab is broken")
	}
	for _, cmd := range []string{
		"flush ruleset",
		"delete table inet pier",
		"flush map inet pier portsany4",
		"flush chain inet pier publish",
		"delete element inet pier bridges { \"pier0\" }",
		"add rule inet pier forward drop",
	} {
		start := time.Now()
		rewrites(t, ns, want, cmd, func() { nft(t, ns, strings.Fields(cmd)...) })
		t.Logf("%s: restored after %v", cmd, time.Since(start).Round(time.Millisecond))
		if !reachesPublishedPort(t, outside) {
			t.Errorf("after %q and the heal: published port unreachable", cmd)
		}
	}

	// The firewall's own changes are not mistaken for foreign ones: the same
	// foreign change costs as many rewrites after 21 of pier's batches as
	// without them. (Pier's batches change elements only, never the handle.)
	foreign := func() { nft(t, ns, "add", "rule", "inet", "pier", "forward", "drop") }
	control := rewrites(t, ns, want, "control", foreign)
	got := rewrites(t, ns, want, "after own changes", func() {
		for i := range 20 {
			b := pb("0.0.0.0", uint16(20000+i), "udp", "172.17.0.2", 53)
			if err := fw.SetPorts(ctx, "own", []PortBinding{b}); err != nil {
				t.Fatal(err)
			}
		}
		if err := fw.RemovePorts(ctx, "own"); err != nil {
			t.Fatal(err)
		}
		foreign() // read after pier's batches: its heal proves they were read
	})
	if got != control {
		t.Errorf("pier's own changes and one foreign rule: %d new tables, one foreign rule alone: %d", got, control)
	}
}

// TestKernelSelfHealsBigTable heals a table of 10,000 published ports, and the
// watcher does not lose notifications while pier writes it (a loss would make
// it rewrite the table once more).
func TestKernelSelfHealsBigTable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	fw, ns := newKernelFirewall(t)
	if err := fw.Start(ctx); err != nil {
		t.Fatal(err)
	}
	before := tableHandle(t, ns)
	for i := range 100 {
		if err := fw.SetPorts(ctx, fmt.Sprintf("owner-%03d", i), manyPorts(i*100, 100)); err != nil {
			t.Fatal(err)
		}
	}
	want := dump(t, ns)
	if !strings.Contains(want, "10.88.39.15") { // port 9999's container
		t.Fatal("the 10,000 ports are not in the table")
	}
	h := tableHandle(t, ns)
	if err := fw.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	reconcile := tableHandle(t, ns) - h
	flush := func() { nft(t, ns, "flush", "ruleset") }
	start := time.Now()
	rewrites(t, ns, want, "10,000 ports", flush)
	t.Logf("10,000 ports restored after %v", time.Since(start).Round(time.Millisecond))
	if diff := cmp.Diff(want, dump(t, ns)); diff != "" {
		t.Fatal(diff)
	}
	total := tableHandle(t, ns) - before

	// Control: a flush and its heal with no writes of pier's before it.
	healed := rewrites(t, ns, want, "control flush", flush)
	if total != reconcile+healed {
		t.Errorf("100 SetPorts, a Reconcile and a flush made %d new tables; a Reconcile makes %d and a flush %d: extra rewrites",
			total, reconcile, healed)
	}
}

// manyPorts returns n TCP bindings of host ports 10000+first... on all
// IPv4 addresses, to distinct container addresses.
func manyPorts(first, n int) []PortBinding {
	out := make([]PortBinding, n)
	for i := range n {
		p := first + i
		out[i] = PortBinding{
			HostIP: netip.IPv4Unspecified(), HostPort: uint16(10000 + p), Proto: "tcp",
			ContainerIP: netip.AddrFrom4([4]byte{10, 88, byte(p >> 8), byte(p)}), ContainerPort: 80,
		}
	}
	return out
}

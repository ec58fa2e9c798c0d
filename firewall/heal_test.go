package firewall

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	vns "github.com/vishvananda/netns"

	"github.com/piernet/pier/internal/nstest"
)

// recorder is a slog handler that keeps the messages it sees.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}

// count returns how many messages contain s.
func (r *recorder) count(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if strings.Contains(m, s) {
			n++
		}
	}
	return n
}

const (
	healedMsg = "changed by another process"
	lostMsg   = "notifications were lost"
)

// newRecorded returns a Firewall in a fresh namespace whose log goes to a recorder.
func newRecorded(t *testing.T) (vns.NsHandle, *Firewall, *recorder) {
	t.Helper()
	ns := nstest.New(t)
	rec := &recorder{}
	fw, err := New(t.Context(), Options{NetNS: ns, Logger: slog.New(rec)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw.Close() })
	return ns, fw, rec
}

// TestKernelSelfHeals breaks pier's table the ways other tools do and
// checks the watcher restores it, exactly, within a second.
func TestKernelSelfHeals(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	ns, fw, rec := newRecorded(t)
	applyGolden(t, fw)
	if err := fw.Start(ctx); err != nil {
		t.Fatal(err)
	}
	want := Render(goldenState())
	for i, cmd := range []string{
		"flush ruleset",
		"delete table inet pier",
		"flush map inet pier portsany4",
		"flush chain inet pier publish",
		"delete element inet pier bridges { \"pier0\" }",
		"add rule inet pier forward drop",
	} {
		start := time.Now()
		nft(t, ns, strings.Fields(cmd)...)
		waitFor(t, 5*time.Second, cmd+": table restored", func() bool { return dumpNow(t, ns) == want })
		t.Logf("%s: restored after %v", cmd, time.Since(start).Round(time.Millisecond))
		if got := rec.count(healedMsg); got != i+1 {
			t.Errorf("after %q: %d heals, want %d", cmd, got, i+1)
		}
	}
	// The firewall's own changes are not mistaken for foreign ones.
	heals := rec.count(healedMsg)
	for i := range 20 {
		b := pb("0.0.0.0", uint16(20000+i), "udp", "172.17.0.2", 53)
		if err := fw.SetPorts(ctx, "own", []PortBinding{b}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fw.RemovePorts(ctx, "own"); err != nil {
		t.Fatal(err)
	}
	nft(t, ns, "flush", "ruleset") // a foreign change after ours: its heal proves ours were read
	waitFor(t, 5*time.Second, "restored", func() bool { return dumpNow(t, ns) == want })
	if got := rec.count(healedMsg); got != heals+1 {
		t.Errorf("own changes caused %d heals", got-heals-1)
	}
}

// TestKernelSelfHealsBigTable heals a table of 10,000 published ports
// within a second, and the watcher does not lose notifications while pier
// writes it.
func TestKernelSelfHealsBigTable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	ns, fw, rec := newRecorded(t)
	if err := fw.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := fw.SetPorts(ctx, fmt.Sprintf("owner-%03d", i), manyPorts(i*100, 100)); err != nil {
			t.Fatal(err)
		}
	}
	want := dump(t, ns)
	if err := fw.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	nft(t, ns, "flush", "ruleset")
	waitFor(t, 10*time.Second, "10,000 ports restored", func() bool { return dumpNow(t, ns) == want })
	t.Logf("10,000 ports restored after %v", time.Since(start).Round(time.Millisecond))
	if diff := cmp.Diff(want, dump(t, ns)); diff != "" {
		t.Fatal(diff)
	}
	if n := rec.count(lostMsg); n > 0 {
		t.Errorf("the watcher lost notifications %d times", n)
	}
	if n := rec.count(healedMsg); n != 1 {
		t.Errorf("%d heals, want 1", n)
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

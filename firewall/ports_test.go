package firewall

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/nstest"
)

// onlyElementOps fails unless the last batch changes set elements only.
func onlyElementOps(t *testing.T, k *fakeKernel, step string) {
	t.Helper()
	for _, op := range k.lastBatch() {
		if !strings.HasPrefix(op, "add element ") && !strings.HasPrefix(op, "delete element ") {
			t.Errorf("%s: batch has %q; want only element changes", step, op)
		}
	}
}

func TestSetPortsIsOneElementBatch(t *testing.T) {
	ctx := t.Context()
	fw, k := newFake(t)
	if err := fw.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	skeleton := k.dump()
	g := goldenState().Ports
	remapped := []PortBinding{pb("0.0.0.0", 8080, "tcp", "172.17.0.2", 8080), pb("0.0.0.0", 8443, "tcp", "172.17.0.2", 443)}
	steps := []struct {
		name    string
		owner   string
		ports   []PortBinding
		batches int
		ops     int
	}{
		{"publish web", ownerWeb, g[ownerWeb], 1, 2},
		{"publish web again", ownerWeb, g[ownerWeb], 0, 0},
		{"same set, other order", ownerWeb, []PortBinding{g[ownerWeb][1], g[ownerWeb][0], g[ownerWeb][1]}, 0, 0},
		{"publish dns (loopback skipped)", ownerDNS, g[ownerDNS], 1, 3},
		{"remap web: one changed, one added, one removed", ownerWeb, remapped, 1, 4},
		{"unpublish dns", ownerDNS, nil, 1, 3},
		{"unpublish unknown", "nobody", nil, 0, 0},
		{"unpublish web", ownerWeb, nil, 1, 2},
	}
	for _, st := range steps {
		before := k.flushes()
		var err error
		if st.ports == nil {
			err = fw.RemovePorts(ctx, st.owner)
		} else {
			err = fw.SetPorts(ctx, st.owner, st.ports)
		}
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := k.flushes() - before; got != st.batches {
			t.Fatalf("%s: %d batches, want %d", st.name, got, st.batches)
		}
		if st.batches > 0 {
			onlyElementOps(t, k, st.name)
			if got := len(k.lastBatch()); got != st.ops {
				t.Errorf("%s: %d element operations, want %d: %q", st.name, got, st.ops, k.lastBatch())
			}
		}
	}
	if diff := cmp.Diff(skeleton, k.dump()); diff != "" {
		t.Errorf("after unpublishing everything (-skeleton +got):\n%s", diff)
	}
}

func TestSetPortsConflictChangesNothing(t *testing.T) {
	ctx := t.Context()
	fw, k := newFake(t)
	if err := fw.SetPorts(ctx, ownerWeb, goldenState().Ports[ownerWeb]); err != nil {
		t.Fatal(err)
	}
	before, batches := k.dump(), k.flushes()
	err := fw.SetPorts(ctx, ownerDNS, []PortBinding{
		pb("198.51.100.1", 53, "udp", "172.18.0.3", 53),
		pb("0.0.0.0", 8080, "tcp", "172.18.0.3", 80),
	})
	if !errdefs.Is(err, errdefs.KindConflict) || !strings.HasSuffix(err.Error(), "Bind for 0.0.0.0:8080 failed: port is already allocated") {
		t.Fatalf("err = %v, want Docker's conflict", err)
	}
	if k.flushes() != batches || k.dump() != before {
		t.Error("a rejected SetPorts changed the kernel")
	}
	if _, ok := fw.State().Ports[ownerDNS]; ok {
		t.Error("a rejected SetPorts changed the desired state")
	}
	// The same port on another family, protocol or address is no conflict.
	if err := fw.SetPorts(ctx, ownerDNS, []PortBinding{pb("0.0.0.0", 8080, "udp", "172.18.0.3", 80), pb("198.51.100.1", 8080, "tcp", "172.18.0.3", 80)}); err != nil {
		t.Errorf("non-conflicting ports: %v", err)
	}
}

func TestInvalidPortsAreRejected(t *testing.T) {
	for _, tc := range []struct {
		owner string
		b     PortBinding
	}{
		{"", pb("0.0.0.0", 80, "tcp", "172.17.0.2", 80)},
		{strings.Repeat("x", 129), pb("0.0.0.0", 80, "tcp", "172.17.0.2", 80)},
		{"o", pb("0.0.0.0", 80, "icmp", "172.17.0.2", 80)},
		{"o", pb("0.0.0.0", 0, "tcp", "172.17.0.2", 80)},
		{"o", pb("0.0.0.0", 80, "tcp", "172.17.0.2", 0)},
		{"o", pb("0.0.0.0", 80, "tcp", "0.0.0.0", 80)},
		{"o", pb("::", 80, "tcp", "172.17.0.2", 80)},
		{"o", pb("0.0.0.0", 80, "tcp", "fd00::2", 80)},
		{"o", pb("fe80::1%eth0", 80, "tcp", "fd00::2", 80)},
		{"o", PortBinding{HostPort: 80, Proto: "tcp", ContainerIP: nstest.Prefixes("172.17.0.2/32")[0].Addr(), ContainerPort: 80}},
	} {
		fw, k := newFake(t)
		err := fw.SetPorts(t.Context(), tc.owner, []PortBinding{tc.b})
		if !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("SetPorts(%q, %s) = %v, want InvalidArgument", tc.owner, tc.b, err)
		}
		if k.flushes() != 0 || fw.State().Ports != nil {
			t.Errorf("SetPorts(%q, %s) changed something", tc.owner, tc.b)
		}
	}
	fw, _ := newFake(t)
	twice := []PortBinding{pb("0.0.0.0", 80, "tcp", "172.17.0.2", 80), pb("0.0.0.0", 80, "tcp", "172.17.0.3", 80)}
	if err := fw.SetPorts(t.Context(), "o", twice); !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Errorf("one host port to two targets: %v, want InvalidArgument", err)
	}
}

func TestConntrackFlushedForChangedUDPPorts(t *testing.T) {
	ctx := t.Context()
	fw, k := newFake(t)
	dns := goldenState().Ports[ownerDNS] // udp v4, udp v6, sctp, loopback udp
	remapped := pb("198.51.100.1", 53, "udp", "172.18.0.4", 53)
	steps := []struct {
		name  string
		do    func() error
		flush []PortBinding
	}{
		{"tcp only", func() error { return fw.SetPorts(ctx, ownerWeb, goldenState().Ports[ownerWeb]) }, nil},
		{"add udp", func() error { return fw.SetPorts(ctx, ownerDNS, dns) }, dns[:2]},
		{"same again", func() error { return fw.SetPorts(ctx, ownerDNS, dns) }, nil},
		{"remap one udp port", func() error { return fw.SetPorts(ctx, ownerDNS, []PortBinding{remapped, dns[1], dns[2]}) },
			[]PortBinding{dns[0], remapped}},
		{"remove", func() error { return fw.RemovePorts(ctx, ownerDNS) }, []PortBinding{remapped, dns[1]}},
	}
	for _, st := range steps {
		before := len(k.conntrackFlushes())
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		flushes := k.conntrackFlushes()[before:]
		var got []PortBinding
		for _, f := range flushes {
			got = append(got, f...)
		}
		slices.SortFunc(got, comparePorts)
		slices.SortFunc(st.flush, comparePorts)
		if diff := cmp.Diff(st.flush, got, equatePrefix); diff != "" || len(flushes) > 1 {
			t.Errorf("%s: %d flushes of (-want +got):\n%s", st.name, len(flushes), diff)
		}
	}
}

// TestStateIncludesPorts checks State() returns normalized copies.
func TestStateIncludesPorts(t *testing.T) {
	fw, _ := newFake(t)
	for owner, bs := range goldenState().Ports {
		if err := fw.SetPorts(t.Context(), owner, bs); err != nil {
			t.Fatal(err)
		}
	}
	s := fw.State()
	if diff := cmp.Diff(normalized(t, State{Ports: goldenState().Ports}).Ports, s.Ports, equatePrefix); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	s.Ports[ownerWeb][0].HostPort = 1
	if fw.State().Ports[ownerWeb][0].HostPort == 1 {
		t.Error("State() shares memory with the firewall")
	}
}

func TestStartWritesMissingTableAndHealsForeignChanges(t *testing.T) {
	ctx := t.Context()
	fw, k := newFake(t)
	for owner, bs := range goldenState().Ports {
		fw.mu.Lock()
		nb, _ := normalizePorts(owner, bs)
		fw.replacePortsLocked(owner, nil, nb)
		fw.mu.Unlock()
	}
	want := fakeDumpOf(t, State{Ports: goldenState().Ports})
	if err := fw.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw.Close() })
	nstest.Eventually(t, "table written at start", 5*time.Second, func() bool { return k.dump() == want })

	k.deleteTable("inet pier")
	nstest.Eventually(t, "deleted table restored", 5*time.Second, func() bool { return k.dump() == want })
	k.flushSet("inet pier", "portsany4")
	nstest.Eventually(t, "flushed map restored", 5*time.Second, func() bool { return k.dump() == want })

	if err := fw.Start(ctx); err == nil {
		t.Error("second Start succeeded")
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	batches := k.flushes()
	k.deleteTable("inet pier")
	if k.flushes() != batches {
		t.Error("a closed firewall wrote to the kernel")
	}
}

// TestOwnChangesDoNotHeal drives the event reader directly: changes made
// through the Firewall's own sockets never kick the healer, others do.
func TestOwnChangesDoNotHeal(t *testing.T) {
	fw, _ := newFake(t)
	if err := fw.SetPorts(t.Context(), ownerWeb, goldenState().Ports[ownerWeb]); err != nil {
		t.Fatal(err)
	}
	// read feeds notices to a reader and reports whether it kicked.
	read := func(notices ...notice) bool {
		ev := &fakeEvents{ch: make(chan notice, len(notices)+1), closed: make(chan struct{})}
		for _, n := range notices {
			ev.ch <- n
		}
		w := &watcher{ev: ev, kick: make(chan struct{}, 1), cancel: func() {}}
		done := make(chan struct{})
		go func() { defer close(done); fw.readEvents(t.Context(), w) }()
		// The reader asks for the sentinel only after handling the rest.
		ev.ch <- notice{port: 1001, end: true}
		nstest.Eventually(t, "notices consumed", 5*time.Second, func() bool { return len(ev.ch) == 0 })
		_ = ev.Close()
		<-done
		return len(w.kick) > 0
	}
	own, foreign := notice{port: 1001}, notice{port: foreignPort}
	end := func(port uint32) notice { return notice{port: port, end: true} }
	if read(own, own, end(1001), own, end(1001)) {
		t.Error("the firewall's own changes kicked the healer")
	}
	if !read(own, end(1001), foreign, foreign, end(foreignPort)) {
		t.Error("a foreign change did not kick the healer")
	}
	if read(end(foreignPort), own) {
		t.Error("a foreign batch that did not touch pier's table kicked the healer")
	}
}

func TestTouchesPier(t *testing.T) {
	// nfgenmsg (family first), then attribute 1 (table name).
	msg := func(family byte, attr []byte) []byte { return append([]byte{family, 0, 0, 0}, attr...) }
	pierAttr := []byte{9, 0, 1, 0, 'p', 'i', 'e', 'r', 0, 0, 0, 0}
	otherAttr := []byte{9, 0, 1, 0, 'n', 'a', 't', 'x', 0, 0, 0, 0}
	for _, tc := range []struct {
		name string
		typ  uint16
		data []byte
		want bool
	}{
		{"deleted table inet pier", 10<<8 | 2, msg(1, pierAttr), true},
		{"deleted element of inet pier", 10<<8 | 14, msg(1, pierAttr), true},
		{"other table", 10<<8 | 2, msg(1, otherAttr), false},
		{"ip pier", 10<<8 | 2, msg(2, pierAttr), false},
		{"generation", 10<<8 | 15, msg(1, pierAttr), false},
		{"other subsystem", 1<<8 | 2, msg(1, pierAttr), false},
		{"short", 10<<8 | 2, []byte{1}, false},
	} {
		m := netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(tc.typ)}, Data: tc.data}
		if got := touchesPier(m); got != tc.want {
			t.Errorf("%s: touchesPier = %v, want %v", tc.name, got, tc.want)
		}
	}
}

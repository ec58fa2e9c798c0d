package cnm

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/piernet/pier/dns"
	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/ipam"
	"github.com/piernet/pier/store"
)

// fakeStore is an in-memory cluster store shared by the nodes of a test; each node
// talks to it through a fakeCluster. It decides what etcd transactions decide in the
// real one: name uniqueness and "no endpoints" on delete.
type fakeStore struct {
	mu       sync.Mutex
	networks map[string]Network
	eps      map[string]RemoteEndpoint
	subs     []chan ClusterEvent
	ipam     *ipam.Default
	vnis     map[uint32]string
	down     bool          // the store is unreachable
	block    chan struct{} // while set, PublishEndpoint waits for it to close (a slow store)
}

func newFakeStore(t *testing.T) *fakeStore {
	return &fakeStore{networks: map[string]Network{}, eps: map[string]RemoteEndpoint{}, ipam: mustIPAM(t), vnis: map[uint32]string{}}
}

func (s *fakeStore) emitLocked(ev ClusterEvent) {
	for _, ch := range s.subs {
		ch <- ev
	}
}

type fakeCluster struct {
	s    *fakeStore
	self Node
}

var errStoreDown = errdefs.Unavailable("cluster store unreachable")

func (f *fakeCluster) Self() Node { return f.self }

func (f *fakeCluster) CreateNetwork(ctx context.Context, n Network) error {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if f.s.down {
		return errStoreDown
	}
	for _, o := range f.s.networks {
		if o.Name == n.Name {
			return errdefs.Conflict("network with name %s already exists", n.Name)
		}
	}
	f.s.networks[n.ID] = n
	f.s.emitLocked(ClusterEvent{Kind: NetworkAdded, Network: n})
	return nil
}

func (f *fakeCluster) DeleteNetwork(ctx context.Context, id string) error {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if f.s.down {
		return errStoreDown
	}
	n, ok := f.s.networks[id]
	if !ok {
		return errdefs.NotFound("network %s not found", id)
	}
	for _, ep := range f.s.eps {
		if ep.NetworkID == id {
			return errdefs.Forbidden("error while removing network: network %s id %s has active endpoints (on node %s)", n.Name, id, ep.Node.Name)
		}
	}
	delete(f.s.networks, id)
	f.s.emitLocked(ClusterEvent{Kind: NetworkRemoved, Network: n})
	return nil
}

func (f *fakeCluster) PublishEndpoint(ctx context.Context, ep RemoteEndpoint) error {
	f.s.mu.Lock()
	if b := f.s.block; b != nil {
		f.s.mu.Unlock()
		<-b
		f.s.mu.Lock()
	}
	defer f.s.mu.Unlock()
	if f.s.down {
		return errStoreDown
	}
	if _, ok := f.s.networks[ep.NetworkID]; !ok {
		return errdefs.NotFound("network %s not found", ep.NetworkID)
	}
	for _, o := range f.s.eps {
		if o.NetworkID == ep.NetworkID && o.Name == ep.Name && o.ID != ep.ID {
			return errdefs.Forbidden("endpoint with name %s already exists in network", ep.Name)
		}
	}
	f.s.eps[ep.ID] = ep
	f.s.emitLocked(ClusterEvent{Kind: EndpointAdded, Endpoint: ep})
	return nil
}

func (f *fakeCluster) WithdrawEndpoint(ctx context.Context, nid, eid string) error {
	f.s.mu.Lock()
	if b := f.s.block; b != nil {
		f.s.mu.Unlock()
		<-b
		f.s.mu.Lock()
	}
	defer f.s.mu.Unlock()
	if f.s.down {
		return errStoreDown
	}
	ep, ok := f.s.eps[eid]
	if !ok {
		return nil
	}
	delete(f.s.eps, eid)
	f.s.emitLocked(ClusterEvent{Kind: EndpointRemoved, Endpoint: ep})
	return nil
}

func (f *fakeCluster) IPAM() ipam.Allocator { return f.s.ipam }

func (f *fakeCluster) AllocateVNIs(ctx context.Context, nid string, want []uint32, n int) ([]uint32, error) {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	if f.s.down {
		return nil, errStoreDown
	}
	for _, v := range want {
		if f.s.vnis[v] != "" {
			return nil, errdefs.Conflict("VXLAN ID %d is in use", v)
		}
	}
	out := append([]uint32{}, want...)
	for v := uint32(4096); len(out) < n; v++ {
		if f.s.vnis[v] == "" {
			out = append(out, v)
		}
	}
	for _, v := range out {
		f.s.vnis[v] = nid
	}
	return out, nil
}

func (f *fakeCluster) ReleaseVNIs(ctx context.Context, nid string) error {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	for v, owner := range f.s.vnis {
		if owner == nid {
			delete(f.s.vnis, v)
		}
	}
	return nil
}

func (f *fakeCluster) Watch(ctx context.Context) (ClusterState, <-chan ClusterEvent, error) {
	f.s.mu.Lock()
	defer f.s.mu.Unlock()
	var st ClusterState
	for _, n := range f.s.networks {
		st.Networks = append(st.Networks, n)
	}
	for _, ep := range f.s.eps {
		st.Endpoints = append(st.Endpoints, ep)
	}
	ch := make(chan ClusterEvent, 1024)
	f.s.subs = append(f.s.subs, ch)
	go func() {
		<-ctx.Done()
		f.s.mu.Lock()
		defer f.s.mu.Unlock()
		for i, c := range f.s.subs {
			if c == ch {
				f.s.subs = append(f.s.subs[:i], f.s.subs[i+1:]...)
				close(ch)
				break
			}
		}
	}()
	return st, ch, nil
}

// peerDriver is a global-scope fake driver that records the peers it is told about
// and wants one VNI per network ("vni" option: a wanted one).
type peerDriver struct {
	*fakeDriver
	pmu   sync.Mutex
	peers map[string]driver.Peer
}

func (d *peerDriver) Capability() driver.Capability {
	return driver.Capability{DataScope: driver.ScopeGlobal, ConnectivityScope: driver.ScopeGlobal}
}

// Join gives no gateway, as the overlay driver: the gateway bridge does.
func (d *peerDriver) Join(ctx context.Context, req driver.JoinRequest) (driver.JoinResult, error) {
	res, err := d.fakeDriver.Join(ctx, req)
	res.Gateway4 = netip.Addr{}
	return res, err
}

func (d *peerDriver) VNIRequest(opts map[string]string, subnets int) ([]uint32, int, error) {
	if v, ok := opts["vni"]; ok {
		var n uint32
		if _, err := fmt.Sscan(v, &n); err != nil {
			return nil, 0, errdefs.InvalidArgument("bad vni %q", v)
		}
		return []uint32{n}, 1, nil
	}
	return nil, subnets, nil
}

func (d *peerDriver) AddPeer(ctx context.Context, p driver.Peer) error {
	d.pmu.Lock()
	defer d.pmu.Unlock()
	d.peers[p.EndpointID] = p
	return nil
}

func (d *peerDriver) RemovePeer(ctx context.Context, p driver.Peer) error {
	d.pmu.Lock()
	defer d.pmu.Unlock()
	delete(d.peers, p.EndpointID)
	return nil
}

func (d *fakeDriver) callList() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.calls, ",")
}

func (d *peerDriver) dump() string {
	d.pmu.Lock()
	defer d.pmu.Unlock()
	var lines []string
	for _, p := range d.peers {
		lines = append(lines, fmt.Sprintf("%s via %s", p.Addr4, p.Node))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// fakeResolver records the embedded DNS's records.
type fakeResolver struct {
	mu   sync.Mutex
	recs map[string]dns.Record
}

func (r *fakeResolver) AddSandbox(ctx context.Context, cfg dns.SandboxConfig) error { return nil }
func (r *fakeResolver) UpdateSandbox(cfg dns.SandboxConfig) error                   { return nil }
func (r *fakeResolver) RemoveSandbox(id string) error                               { return nil }
func (r *fakeResolver) Upsert(rec dns.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs[rec.EndpointID] = rec
}
func (r *fakeResolver) Remove(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.recs, id)
}

// resolve answers name on network nid like the embedded DNS would.
func (r *fakeResolver) resolve(nid, name string) []netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []netip.Addr
	for _, rec := range r.recs {
		for _, n := range rec.Names {
			if rec.NetworkID == nid && n == name {
				out = append(out, rec.Addr4)
			}
		}
	}
	return out
}

// node is one controller of a fake cluster.
type node struct {
	c   *Controller
	drv *peerDriver
	dns *fakeResolver
	dir string
	st  *store.Store
}

func newNode(t *testing.T, s *fakeStore, name, addr string, dir string) *node {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	st, err := store.Open(filepath.Join(dir, "pier.db"))
	if err != nil {
		t.Fatal(err)
	}
	nd := &node{drv: &peerDriver{fakeDriver: newFakeDriver("gdrv", nil, nil), peers: map[string]driver.Peer{}},
		dns: &fakeResolver{recs: map[string]dns.Record{}}, dir: dir, st: st}
	reg := driver.NewRegistry()
	for _, d := range []driver.Driver{nd.drv, newFakeDriver("bridge", nil, nil)} {
		if err := reg.Register(d); err != nil {
			t.Fatal(err)
		}
	}
	cl := &fakeCluster{s: s, self: Node{ID: "id-" + name, Name: name, Addr: netip.MustParseAddr(addr)}}
	nd.c, err = New(t.Context(), Config{ExecRoot: dir, Store: st, Drivers: reg, IPAM: mustIPAM(t), OS: newFakeOS(),
		DNS: nd.dns, HostResolvConf: "/dev/null", Cluster: cl})
	if err != nil {
		t.Fatal(err)
	}
	nd.c.Start(t.Context())
	t.Cleanup(nd.close)
	return nd
}

func (nd *node) close() {
	nd.c.Close()
	nd.st.Close()
}

func TestGlobalNetworkAcrossNodes(t *testing.T) {
	ctx := t.Context()
	s := newFakeStore(t)
	a := newNode(t, s, "h1", "192.0.2.1", "")
	b := newNode(t, s, "h2", "192.0.2.2", "")

	n, err := a.c.CreateNetwork(ctx, NetworkSpec{Name: "ov", Driver: "gdrv", Attachable: true})
	if err != nil {
		t.Fatal(err)
	}
	if n.Scope != driver.ScopeGlobal || !n.IPv4[0].Subnet.IsValid() {
		t.Fatalf("created %+v, want global scope with a pool", n)
	}
	nstest.Eventually(t, "h2 to list ov", 5*time.Second, func() bool { got, err := b.c.Network(ctx, "ov"); return err == nil && got.ID == n.ID })
	if got, _ := b.c.Network(ctx, "ov"); got.Scope != driver.ScopeGlobal || got.IPv4[0].Subnet != n.IPv4[0].Subnet {
		t.Fatalf("h2 sees %+v", got)
	}
	nstest.Eventually(t, "h2's driver to set up ov", 5*time.Second, func() bool { return strings.Contains(b.drv.callList(), "CreateNetwork ov") })
	if _, err := b.c.CreateNetwork(ctx, NetworkSpec{Name: "ov", Driver: "gdrv"}); !errdefs.Is(err, errdefs.KindConflict) {
		t.Fatalf("same name on h2: %v, want Conflict", err)
	}
	// A local network may not take a global network's name either.
	if _, err := b.c.CreateNetwork(ctx, NetworkSpec{Name: "ov"}); !errdefs.Is(err, errdefs.KindConflict) {
		t.Fatalf("local network named like a global one: %v, want Conflict", err)
	}

	mustSB := func(nd *node, name string) {
		if _, err := nd.c.CreateSandbox(ctx, SandboxSpec{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	mustSB(a, "web")
	mustSB(b, "cli")
	epA, err := a.c.Connect(ctx, "ov", "web", EndpointSpec{Aliases: []string{"www"}})
	if err != nil {
		t.Fatal(err)
	}
	epB, err := b.c.Connect(ctx, "ov", "cli", EndpointSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if epA.Addr4 == epB.Addr4 {
		t.Fatalf("both nodes got %s", epA.Addr4)
	}
	// h2's DNS answers h1's sandbox by name and alias; h2's driver knows the peer.
	for _, name := range []string{"web", "www"} {
		nstest.Eventually(t, "h2 to resolve "+name, 5*time.Second, func() bool {
			got := b.dns.resolve(n.ID, name)
			return len(got) == 1 && got[0] == epA.Addr4.Addr()
		})
	}
	nstest.Eventually(t, "h2's driver to know web", 5*time.Second, func() bool { return b.drv.dump() == epA.Addr4.String()+" via 192.0.2.1" })
	nstest.Eventually(t, "h1's driver to know cli", 5*time.Second, func() bool { return a.drv.dump() == epB.Addr4.String()+" via 192.0.2.2" })
	// Remote endpoints are read-only: not among h2's endpoints.
	if eps, _ := b.c.Endpoints(ctx, "ov"); len(eps) != 1 || eps[0].ID != epB.ID {
		t.Fatalf("h2's local endpoints: %+v", eps)
	}
	// A name taken on another node.
	mustSB(b, "web")
	if _, err := b.c.Connect(ctx, "ov", "web", EndpointSpec{}); !errdefs.Is(err, errdefs.KindForbidden) {
		t.Fatalf("second 'web' on h2: %v, want Forbidden", err)
	}
	// Delete is refused while any node has endpoints, naming it.
	if err := b.c.Disconnect(ctx, "ov", "cli"); err != nil {
		t.Fatal(err)
	}
	if err := b.c.DeleteNetwork(ctx, "ov"); !errdefs.Is(err, errdefs.KindForbidden) || !strings.Contains(err.Error(), "h1") {
		t.Fatalf("delete with h1's endpoint: %v", err)
	}
	if err := a.c.Disconnect(ctx, "ov", "web"); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "h2 to forget web", 5*time.Second, func() bool { return len(b.dns.resolve(n.ID, "web")) == 0 && b.drv.dump() == "" })
	if err := b.c.DeleteNetwork(ctx, "ov"); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "h1 to drop ov", 5*time.Second, func() bool { _, err := a.c.Network(ctx, "ov"); return errdefs.Is(err, errdefs.KindNotFound) })
	// The pool went back: a new global network gets a subnet again.
	if _, err := a.c.CreateNetwork(ctx, NetworkSpec{Name: "ov2", Driver: "gdrv", IPAM: []PoolSpec{{Subnet: n.IPv4[0].Subnet}}}); err != nil {
		t.Fatalf("re-using the released subnet: %v", err)
	}
}

func TestGlobalScopeNeedsCluster(t *testing.T) {
	r := newRig(t)
	pd := &peerDriver{fakeDriver: newFakeDriver("gdrv", nil, nil), peers: map[string]driver.Peer{}}
	r.must(t, r.c.drivers.Register(pd))
	_, err := r.c.CreateNetwork(t.Context(), NetworkSpec{Name: "ov", Driver: "gdrv"})
	if !errdefs.Is(err, errdefs.KindInvalidArgument) || !strings.Contains(err.Error(), "cluster mode") {
		t.Fatalf("global network without cluster: %v", err)
	}
	if pd.callList() != "" || len(r.c.Networks(t.Context())) != 0 {
		t.Fatalf("refused create left traces: calls %v, networks %v", pd.calls, r.c.Networks(t.Context()))
	}
}

func TestGlobalStoreDownFailsFastAndChangesNothing(t *testing.T) {
	ctx := t.Context()
	s := newFakeStore(t)
	a := newNode(t, s, "h1", "192.0.2.1", "")
	if _, err := a.c.CreateNetwork(ctx, NetworkSpec{Name: "ov", Driver: "gdrv", Attachable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.CreateSandbox(ctx, SandboxSpec{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.Connect(ctx, "ov", "web", EndpointSpec{}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.down = true
	s.mu.Unlock()
	if _, err := a.c.CreateNetwork(ctx, NetworkSpec{Name: "ov2", Driver: "gdrv"}); !errdefs.Is(err, errdefs.KindUnavailable) {
		t.Fatalf("create with the store down: %v, want Unavailable", err)
	}
	if err := a.c.Disconnect(ctx, "ov", "web"); !errdefs.Is(err, errdefs.KindUnavailable) {
		t.Fatalf("disconnect with the store down: %v, want Unavailable", err)
	}
	if eps, _ := a.c.Endpoints(ctx, "ov"); len(eps) != 1 {
		t.Fatalf("endpoint lost by a failed disconnect: %+v", eps)
	}
	// Local networks keep working.
	if _, err := a.c.CreateNetwork(ctx, NetworkSpec{Name: "local"}); err != nil {
		t.Fatalf("local create with the store down: %v", err)
	}
	if _, err := a.c.Connect(ctx, "local", "web", EndpointSpec{}); err != nil {
		t.Fatalf("local connect with the store down: %v", err)
	}
}

func TestGlobalRestartReconcilesOwnRecords(t *testing.T) {
	ctx := t.Context()
	s := newFakeStore(t)
	dir := t.TempDir()
	a := newNode(t, s, "h1", "192.0.2.1", dir)
	if _, err := a.c.CreateNetwork(ctx, NetworkSpec{Name: "ov", Driver: "gdrv", Attachable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.CreateSandbox(ctx, SandboxSpec{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	ep, err := a.c.Connect(ctx, "ov", "web", EndpointSpec{})
	if err != nil {
		t.Fatal(err)
	}
	a.close()
	// While h1 is away its record vanishes and a stale one of it appears.
	s.mu.Lock()
	delete(s.eps, ep.ID)
	s.eps["stale"] = RemoteEndpoint{ID: "stale", Name: "ghost", NetworkID: ep.NetworkID, Node: Node{ID: "id-h1", Name: "h1"}}
	s.mu.Unlock()
	a2 := newNode(t, s, "h1", "192.0.2.1", dir)
	s.mu.Lock()
	_, mine := s.eps[ep.ID]
	_, stale := s.eps["stale"]
	s.mu.Unlock()
	if !mine || stale {
		t.Fatalf("after restart: own record present=%v, stale present=%v", mine, stale)
	}
	if eps, _ := a2.c.Endpoints(ctx, "ov"); len(eps) != 1 || eps[0].ID != ep.ID {
		t.Fatalf("restored endpoints: %+v", eps)
	}
}

func TestGlobalNetworkVNIs(t *testing.T) {
	ctx := t.Context()
	s := newFakeStore(t)
	a := newNode(t, s, "h1", "192.0.2.1", "")
	b := newNode(t, s, "h2", "192.0.2.2", "")
	n1, err := a.c.CreateNetwork(ctx, NetworkSpec{Name: "ov1", Driver: "gdrv"})
	if err != nil {
		t.Fatal(err)
	}
	n2, err := b.c.CreateNetwork(ctx, NetworkSpec{Name: "ov2", Driver: "gdrv"})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(n1.VNIs, n2.VNIs) != "[4096] [4097]" {
		t.Fatalf("VNIs %v %v", n1.VNIs, n2.VNIs)
	}
	nstest.Eventually(t, "h2's driver to get ov1 with its VNI", 5*time.Second, func() bool {
		b.drv.mu.Lock()
		defer b.drv.mu.Unlock()
		return fmt.Sprint(b.drv.gateways[n1.ID].VNIs) == "[4096]"
	})
	if _, err := a.c.CreateNetwork(ctx, NetworkSpec{Name: "ov3", Driver: "gdrv", Options: map[string]string{"vni": "4097"}}); !errdefs.Is(err, errdefs.KindConflict) {
		t.Fatalf("taken VNI: %v, want Conflict", err)
	}
	if _, err := a.c.Network(ctx, "ov3"); !errdefs.Is(err, errdefs.KindNotFound) {
		t.Fatalf("refused network exists: %v", err)
	}
	if err := b.c.DeleteNetwork(ctx, "ov2"); err != nil {
		t.Fatal(err)
	}
	n3, err := a.c.CreateNetwork(ctx, NetworkSpec{Name: "ov3", Driver: "gdrv", Options: map[string]string{"vni": "4097"}})
	if err != nil || fmt.Sprint(n3.VNIs) != "[4097]" {
		t.Fatalf("released VNI not reusable: %v %v", n3.VNIs, err)
	}
}

func TestGlobalNetworkNotAttachable(t *testing.T) {
	ctx := t.Context()
	a := newNode(t, newFakeStore(t), "h1", "192.0.2.1", "")
	if _, err := a.c.CreateNetwork(ctx, NetworkSpec{Name: "svc", Driver: "gdrv"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.CreateNetwork(ctx, NetworkSpec{Name: "att", Driver: "gdrv", Attachable: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.CreateSandbox(ctx, SandboxSpec{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.c.Connect(ctx, "svc", "web", EndpointSpec{}); !errdefs.Is(err, errdefs.KindForbidden) || !strings.Contains(err.Error(), "attachable") {
		t.Fatalf("connect to a non-attachable global network: %v", err)
	}
	if _, err := a.c.Connect(ctx, "att", "web", EndpointSpec{}); err != nil {
		t.Fatalf("connect to an attachable one: %v", err)
	}
}

func TestGatewayBridgeForOverlayOnlySandboxes(t *testing.T) {
	ctx := t.Context()
	a := newNode(t, newFakeStore(t), "h1", "192.0.2.1", "")
	for _, spec := range []NetworkSpec{gatewayBridgeSpec(), {Name: "ov", Driver: "gdrv", Attachable: true},
		{Name: "inner", Driver: "gdrv", Attachable: true, Internal: true}, {Name: "lan"}} {
		if _, err := a.c.CreateNetwork(ctx, spec); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.c.CreateSandbox(ctx, SandboxSpec{Name: "web"}); err != nil {
		t.Fatal(err)
	}
	nets := func() string {
		eps, err := a.c.SandboxEndpoints(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		sb, _ := a.c.Sandbox(ctx, "web")
		var out []string
		for _, ep := range eps {
			n, _ := a.c.Network(ctx, ep.NetworkID)
			name := n.Name
			if ep.ID == sb.GatewayEndpoint {
				name += "*"
			}
			out = append(out, name)
		}
		sort.Strings(out)
		return strings.Join(out, " ")
	}
	step := func(what string, err error, want string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := nets(); got != want {
			t.Fatalf("after %s: networks %q, want %q (* = default gateway)", what, got, want)
		}
	}
	_, err := a.c.Connect(ctx, "inner", "web", EndpointSpec{})
	step("connect to an internal overlay", err, "inner")
	_, err = a.c.Connect(ctx, "ov", "web", EndpointSpec{})
	step("connect to an overlay", err, "inner ov pier_gwbridge*")
	_, err = a.c.Connect(ctx, "lan", "web", EndpointSpec{})
	step("connect to a bridge network", err, "inner lan* ov")
	step("disconnect the bridge network", a.c.Disconnect(ctx, "lan", "web"), "inner ov pier_gwbridge*")
	step("disconnect the overlay", a.c.Disconnect(ctx, "ov", "web"), "inner")
}

// slowStoreRig is one node with a global network "ov", a local one "lan" and
// sandboxes s1 and s2, on a fake store a test can block.
func slowStoreRig(t *testing.T) (*fakeStore, *node) {
	ctx := t.Context()
	s := newFakeStore(t)
	a := newNode(t, s, "h1", "192.0.2.1", "")
	for _, spec := range []NetworkSpec{{Name: "ov", Driver: "gdrv", Attachable: true}, {Name: "lan"}} {
		if _, err := a.c.CreateNetwork(ctx, spec); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"s1", "s2"} {
		if _, err := a.c.CreateSandbox(ctx, SandboxSpec{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	return s, a
}

// TestSlowStoreDoesNotStallLocalWork: a global connect waiting on the cluster store
// does not hold the controller's operation lock; a local connect meanwhile finishes.
func TestSlowStoreDoesNotStallLocalWork(t *testing.T) {
	ctx := t.Context()
	s, a := slowStoreRig(t)
	s.mu.Lock()
	s.block = make(chan struct{})
	s.mu.Unlock()
	global := make(chan error, 1)
	go func() { _, err := a.c.Connect(ctx, "ov", "s1", EndpointSpec{}); global <- err }()
	local := make(chan error, 1)
	go func() { _, err := a.c.Connect(ctx, "lan", "s2", EndpointSpec{}); local <- err }()
	select {
	case err := <-local:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a local connect waited for the cluster store")
	}
	select {
	case err := <-global:
		t.Fatalf("global connect finished while the store was blocked: %v", err)
	default:
	}
	s.mu.Lock()
	close(s.block)
	s.block = nil
	s.mu.Unlock()
	if err := <-global; err != nil {
		t.Fatalf("global connect after the store answered: %v", err)
	}
	eps, _ := a.c.SandboxEndpoints(ctx, "s1")
	if len(eps) == 0 {
		t.Fatal("s1 not connected")
	}
	s.mu.Lock()
	rec := s.eps[eps[0].ID]
	s.mu.Unlock()
	if rec.MAC == "" && rec.SandboxName != "s1" || len(rec.Names) == 0 {
		t.Fatalf("published record incomplete: %+v", rec)
	}
}

// TestSlowStoreDoesNotStallDisconnects: a global disconnect waiting on the store does
// not hold the operation lock either; once the store answers it completes.
func TestSlowStoreDoesNotStallDisconnects(t *testing.T) {
	ctx := t.Context()
	s, a := slowStoreRig(t)
	ep, err := a.c.Connect(ctx, "ov", "s1", EndpointSpec{})
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.block = make(chan struct{})
	s.mu.Unlock()
	global := make(chan error, 1)
	go func() { global <- a.c.Disconnect(ctx, "ov", "s1") }()
	local := make(chan error, 1)
	go func() { _, err := a.c.Connect(ctx, "lan", "s2", EndpointSpec{}); local <- err }()
	select {
	case err := <-local:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a local connect waited for a global disconnect's store round trip")
	}
	s.mu.Lock()
	close(s.block)
	s.block = nil
	s.mu.Unlock()
	if err := <-global; err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	_, still := s.eps[ep.ID]
	s.mu.Unlock()
	if still {
		t.Fatal("record still published after the disconnect")
	}
	if eps, _ := a.c.Endpoints(ctx, "ov"); len(eps) != 0 {
		t.Fatalf("endpoint left locally: %+v", eps)
	}
}

// Services are not modelled by the fake (stack's cluster tests run them on etcd).
func (f *fakeCluster) CreateService(context.Context, Service) error {
	return errdefs.NotImplemented("fake cluster: no services")
}
func (f *fakeCluster) DeleteService(context.Context, string) error  { return nil }
func (f *fakeCluster) UpdateService(context.Context, Service) error { return nil }
func (f *fakeCluster) AckWithdrawal(context.Context, string) error  { return nil }
func (f *fakeCluster) WaitWithdrawn(context.Context, string, time.Duration) ([]string, error) {
	return nil, nil
}

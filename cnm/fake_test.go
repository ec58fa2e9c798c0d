package cnm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/ipam"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/store"
)

// fakeOS is an in-memory SandboxOS that prints its state like `ip addr`/`ip route`.
type fakeOS struct {
	mu     sync.Mutex
	ns     map[string]map[string]netns.Interface // key -> ifname -> interface
	routes map[string]netns.DefaultRoute
	procs  map[string]int // key -> processes running in it
	failOn string         // method name that fails
}

func newFakeOS() *fakeOS {
	return &fakeOS{ns: map[string]map[string]netns.Interface{}, routes: map[string]netns.DefaultRoute{}, procs: map[string]int{}}
}

func (f *fakeOS) HostKey() string { return "/host" }

func (f *fakeOS) fail(method string) error {
	if f.failOn == method {
		return fmt.Errorf("fake %s failure", method)
	}
	return nil
}

func (f *fakeOS) Create(ctx context.Context, id string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := "/ns/" + id[:6]
	f.ns[key] = map[string]netns.Interface{}
	return key, f.fail("Create")
}

func (f *fakeOS) Exists(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.ns[key]
	return ok || key == "/host"
}

func (f *fakeOS) Destroy(ctx context.Context, key string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ns, key)
	delete(f.routes, key)
	return nil
}

func (f *fakeOS) Pinned() ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var keys []string
	for k := range f.ns {
		keys = append(keys, k)
	}
	return keys, nil
}

func (f *fakeOS) ConfigureInterface(ctx context.Context, key string, ifc netns.Interface) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("ConfigureInterface"); err != nil {
		return err
	}
	f.ns[key][ifc.Name] = ifc
	return nil
}

func (f *fakeOS) RemoveInterface(ctx context.Context, key, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ns[key], name)
	return nil
}

func (f *fakeOS) ReleaseInterface(ctx context.Context, key, name, srcName string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ns[key], name)
	return nil
}

func (f *fakeOS) SetDefaultRoute(ctx context.Context, key string, r netns.DefaultRoute) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("SetDefaultRoute"); err != nil {
		return err
	}
	f.routes[key] = r
	return nil
}

func (f *fakeOS) Processes(ctx context.Context, key string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.procs[key], nil
}

func (f *fakeOS) StopProcesses(ctx context.Context, key string, grace time.Duration) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.procs[key]
	delete(f.procs, key)
	return n, f.fail("StopProcesses")
}

// dump prints every namespace's interfaces and default route, sorted.
func (f *fakeOS) dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lines []string
	for key, ifs := range f.ns {
		for _, ifc := range ifs {
			lines = append(lines, fmt.Sprintf("%s %s %s %s", key, ifc.Name, ifc.Addr4, ifc.Addr6))
		}
		if r := f.routes[key]; r.IfName != "" {
			lines = append(lines, fmt.Sprintf("%s default dev %s via %s %s", key, r.IfName, r.GW4, r.GW6))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// fakeDriver records calls and joins by creating the interface "directly" (no SrcName).
type fakeDriver struct {
	name      string
	mu        sync.Mutex
	calls     []string
	failJoin  bool
	dstPrefix string // when set, Join answers like a plugin: SrcName + DstPrefix
	gateways  map[string]driver.NetworkConfig
}

func (d *fakeDriver) record(s string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, s)
}

func (d *fakeDriver) Name() string { return d.name }
func (d *fakeDriver) Capability() driver.Capability {
	return driver.Capability{DataScope: driver.ScopeLocal, ConnectivityScope: driver.ScopeLocal}
}
func (d *fakeDriver) CreateNetwork(ctx context.Context, nc driver.NetworkConfig) error {
	d.mu.Lock()
	d.gateways[nc.ID] = nc
	d.mu.Unlock()
	d.record("CreateNetwork " + nc.Name)
	return nil
}
func (d *fakeDriver) DeleteNetwork(ctx context.Context, nid string) error {
	d.record("DeleteNetwork")
	return nil
}
func (d *fakeDriver) CreateEndpoint(ctx context.Context, ec driver.EndpointConfig) (driver.EndpointInfo, error) {
	d.record("CreateEndpoint")
	return driver.EndpointInfo{}, nil
}
func (d *fakeDriver) DeleteEndpoint(ctx context.Context, nid, eid string) error {
	d.record("DeleteEndpoint")
	return nil
}
func (d *fakeDriver) Join(ctx context.Context, req driver.JoinRequest) (driver.JoinResult, error) {
	d.record("Join " + req.IfName)
	if d.failJoin {
		return driver.JoinResult{}, errors.New("fake join failure")
	}
	d.mu.Lock()
	nc := d.gateways[req.NetworkID]
	d.mu.Unlock()
	res := driver.JoinResult{DisableGateway: nc.Internal}
	if d.dstPrefix != "" {
		res.SrcName, res.DstPrefix = "tmp-"+req.EndpointID[:4], d.dstPrefix
	}
	if len(nc.IPv4) > 0 {
		res.Gateway4 = nc.IPv4[0].Gateway.Addr()
	}
	return res, nil
}
func (d *fakeDriver) Leave(ctx context.Context, nid, eid string) error {
	d.record("Leave")
	return nil
}
func (d *fakeDriver) ProgramExternalConnectivity(ctx context.Context, nid, eid string) error {
	d.record("Program " + eid[:4])
	return nil
}
func (d *fakeDriver) RevokeExternalConnectivity(ctx context.Context, nid, eid string) error {
	d.record("Revoke " + eid[:4])
	return nil
}

// rig is a controller over fakes with a real IPAM and a real store in a temp dir.
type rig struct {
	c    *Controller
	os   *fakeOS
	drv  *fakeDriver
	ipam *ipam.Default
}

func newRig(t *testing.T) *rig {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "pier.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	alloc, err := ipam.New(ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{os: newFakeOS(), drv: &fakeDriver{name: "bridge", gateways: map[string]driver.NetworkConfig{}}, ipam: alloc}
	reg := driver.NewRegistry()
	if err := reg.Register(r.drv); err != nil {
		t.Fatal(err)
	}
	r.c, err = New(t.Context(), Config{ExecRoot: dir, Store: st, Drivers: reg, IPAM: alloc, OS: r.os, HostResolvConf: "/dev/null"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mustIPAM(t *testing.T) *ipam.Default {
	t.Helper()
	a, err := ipam.New(ipam.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

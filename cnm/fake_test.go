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
	"github.com/piernet/pier/portmap"
	"github.com/piernet/pier/store"
)

// faults makes one chosen step of an operation fail. Every change a fake makes (an
// OS or driver call) and every store write is a step, numbered from 1 as they happen;
// steps after the failing one (the rollback's) succeed.
type faults struct {
	mu     sync.Mutex
	at     int      // the step that fails; 0 = none
	n      int      // steps counted since arm
	steps  []string // their names, in order
	failed string   // the step that failed, "" = none yet
}

// arm makes step at (from now) fail; 0 only counts.
func (f *faults) arm(at int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.at, f.n, f.steps, f.failed = at, 0, nil, ""
}

func (f *faults) step(name string) error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	f.steps = append(f.steps, name)
	if f.n != f.at {
		return nil
	}
	f.failed = name
	return fmt.Errorf("injected %s failure", name)
}

// faultCtx counts the store's write check (store.Update starts with ctx.Err()) as
// the step "store", so a write can be made to fail like any kernel call. Rollbacks
// run under context.WithoutCancel, which does not ask the parent.
type faultCtx struct {
	context.Context
	f *faults
}

func (c faultCtx) Err() error {
	if err := c.f.step("store"); err != nil {
		return err
	}
	return c.Context.Err()
}

// fakeOS is an in-memory SandboxOS that prints its state like `ip addr`/`ip route`.
type fakeOS struct {
	mu     sync.Mutex
	ns     map[string]map[string]netns.Interface // key -> ifname -> interface
	routes map[string]netns.DefaultRoute
	procs  map[string]int // key -> processes running in it
	failOn string         // method name that fails
	faults *faults
}

func newFakeOS() *fakeOS {
	return &fakeOS{ns: map[string]map[string]netns.Interface{}, routes: map[string]netns.DefaultRoute{}, procs: map[string]int{}}
}

func (f *fakeOS) HostKey() string { return "/host" }

func (f *fakeOS) fail(method string) error {
	if f.failOn == method {
		return fmt.Errorf("fake %s failure", method)
	}
	return f.faults.step(method)
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
	if err := f.fail("Destroy"); err != nil {
		return err
	}
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

// addBare is a driver creating an interface directly in the sandbox, unconfigured.
func (f *fakeOS) addBare(key, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ns[key] != nil {
		f.ns[key][name] = netns.Interface{Name: name}
	}
}

func (f *fakeOS) removeBare(key, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ns[key], name)
}

func (f *fakeOS) RemoveInterface(ctx context.Context, key, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("RemoveInterface"); err != nil {
		return err
	}
	delete(f.ns[key], name)
	return nil
}

func (f *fakeOS) ReleaseInterface(ctx context.Context, key, name, srcName string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail("ReleaseInterface"); err != nil {
		return err
	}
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

// fakeDriver records calls. Its Join creates the interface directly in the sandbox
// (no SrcName) unless dstPrefix is set; Leave deletes it. It publishes ports: the
// bindings of a programmed endpoint are its ports on host port 40000+container port
// (or the requested one).
type fakeDriver struct {
	name       string
	os         *fakeOS
	faults     *faults
	mu         sync.Mutex
	calls      []string
	failJoin   bool
	dstPrefix  string // when set, Join answers like a plugin: SrcName + DstPrefix
	gateways   map[string]driver.NetworkConfig
	joins      map[string]driver.JoinRequest // endpoint ID -> its join
	programmed map[string]bool
	capa       driver.Capability // beyond the local scopes
	// decode, when set, is the driver's DecodeOptions (else every option is accepted).
	decode func(opts map[string]string) (driver.NetworkOptions, error)
}

func newFakeDriver(name string, os *fakeOS, f *faults) *fakeDriver {
	return &fakeDriver{name: name, os: os, faults: f, gateways: map[string]driver.NetworkConfig{},
		joins: map[string]driver.JoinRequest{}, programmed: map[string]bool{}}
}

func (d *fakeDriver) record(s string) error {
	d.mu.Lock()
	d.calls = append(d.calls, s)
	d.mu.Unlock()
	name, _, _ := strings.Cut(s, " ")
	return d.faults.step(name)
}

func (d *fakeDriver) Name() string { return d.name }
func (d *fakeDriver) Capability() driver.Capability {
	c := d.capa
	c.DataScope, c.ConnectivityScope = driver.ScopeLocal, driver.ScopeLocal
	return c
}

// DecodeOptions implements driver.OptionDecoder.
func (d *fakeDriver) DecodeOptions(opts map[string]string) (driver.NetworkOptions, error) {
	if d.decode == nil {
		return driver.NetworkOptions{}, nil
	}
	return d.decode(opts)
}
func (d *fakeDriver) CreateNetwork(ctx context.Context, nc driver.NetworkConfig) error {
	if err := d.record("CreateNetwork " + nc.Name); err != nil {
		return err
	}
	d.mu.Lock()
	d.gateways[nc.ID] = nc
	d.mu.Unlock()
	return nil
}
func (d *fakeDriver) DeleteNetwork(ctx context.Context, nid string) error {
	return d.record("DeleteNetwork")
}
func (d *fakeDriver) CreateEndpoint(ctx context.Context, ec driver.EndpointConfig) (driver.EndpointInfo, error) {
	return driver.EndpointInfo{}, d.record("CreateEndpoint")
}
func (d *fakeDriver) DeleteEndpoint(ctx context.Context, nid, eid string) error {
	return d.record("DeleteEndpoint")
}
func (d *fakeDriver) Join(ctx context.Context, req driver.JoinRequest) (driver.JoinResult, error) {
	if err := d.record("Join " + req.IfName); err != nil {
		return driver.JoinResult{}, err
	}
	if d.failJoin {
		return driver.JoinResult{}, errors.New("fake join failure")
	}
	d.mu.Lock()
	nc := d.gateways[req.NetworkID]
	d.joins[req.EndpointID] = req
	d.mu.Unlock()
	res := driver.JoinResult{DisableGateway: nc.Internal}
	if d.dstPrefix != "" {
		res.SrcName, res.DstPrefix = "tmp-"+req.EndpointID[:4], d.dstPrefix
	} else if d.os != nil {
		d.os.addBare(req.SandboxKey, req.IfName)
	}
	if len(nc.IPv4) > 0 {
		res.Gateway4 = nc.IPv4[0].Gateway.Addr()
	}
	return res, nil
}
func (d *fakeDriver) Leave(ctx context.Context, nid, eid string) error {
	if err := d.record("Leave"); err != nil {
		return err
	}
	d.mu.Lock()
	req, ok := d.joins[eid]
	delete(d.joins, eid)
	d.mu.Unlock()
	if ok && d.dstPrefix == "" && d.os != nil {
		d.os.removeBare(req.SandboxKey, req.IfName)
	}
	return nil
}
func (d *fakeDriver) ProgramExternalConnectivity(ctx context.Context, nid, eid string) error {
	if err := d.record("Program " + eid[:4]); err != nil {
		return err
	}
	d.mu.Lock()
	d.programmed[eid] = true
	d.mu.Unlock()
	return nil
}
func (d *fakeDriver) RevokeExternalConnectivity(ctx context.Context, nid, eid string) error {
	if err := d.record("Revoke " + eid[:4]); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.programmed, eid)
	d.mu.Unlock()
	return nil
}

// PublishedPorts implements driver.PortPublisher.
func (d *fakeDriver) PublishedPorts(eid string) []portmap.Binding {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.programmed[eid] {
		return nil
	}
	req := d.joins[eid]
	var out []portmap.Binding
	for _, p := range req.Ports {
		host := p.HostPort
		if host == 0 {
			host = 40000 + p.ContainerPort
		}
		out = append(out, portmap.Binding{HostPort: host, Proto: p.Proto, ContainerIP: req.Addr4.Addr(), ContainerPort: p.ContainerPort})
	}
	return out
}

// dump prints the driver's joins and programmed endpoints, sorted.
func (d *fakeDriver) dump() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var lines []string
	for eid, req := range d.joins {
		lines = append(lines, fmt.Sprintf("%s join %s %s %s", d.name, eid[:4], req.SandboxKey, req.IfName))
	}
	for eid := range d.programmed {
		lines = append(lines, fmt.Sprintf("%s program %s", d.name, eid[:4]))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// rig is a controller over fakes with a real IPAM and a real store in a temp dir.
type rig struct {
	c      *Controller
	os     *fakeOS
	drv    *fakeDriver
	ipam   *ipam.Default
	faults *faults
}

func newRig(t *testing.T) *rig {
	t.Helper()
	return newRigIPAM(t, nil)
}

// newRigIPAM is newRig with the IPAM seen through wrap (nil: as it is).
func newRigIPAM(t *testing.T, wrap func(ipam.Allocator) ipam.Allocator) *rig {
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
	r := &rig{os: newFakeOS(), faults: &faults{}, ipam: alloc}
	r.os.faults = r.faults
	r.drv = newFakeDriver("bridge", r.os, r.faults)
	reg := driver.NewRegistry()
	if err := reg.Register(r.drv); err != nil {
		t.Fatal(err)
	}
	var a ipam.Allocator = alloc
	if wrap != nil {
		a = wrap(alloc)
	}
	r.c, err = New(t.Context(), Config{ExecRoot: dir, Store: st, Drivers: reg, IPAM: a, OS: r.os, HostResolvConf: "/dev/null"})
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

package stack

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/internal/stacktest"
	"github.com/piernet/pier/netns"
)

// env is one test "host": a fresh network namespace plus data and exec roots.
//
// Every kernel call goes through handles bound to the host's namespace, so tests that
// build their own envs run with t.Parallel(). Not in parallel: tests that create
// services or cluster labs (lb and ingress add nftables sets without an ID, which the
// library numbers from a process-wide counter without a lock, a data race that -race
// reports when two such tests overlap), and tests that assert a short wall-clock bound.
type env struct {
	t        testing.TB
	hostPath string
	opts     Options
	s        *Stack
}

func newEnv(t *testing.T) *env { return newEnvTB(t) }

// newEnvB is newEnv for benchmarks.
func newEnvB(b *testing.B) *env { return newEnvTB(b) }

// newEnvTB builds a test host; setup runs before the stack opens (cluster options).
func newEnvTB(t testing.TB, setup ...func(*env)) *env {
	t.Helper()
	h := stacktest.NewHost(t, "nameserver 192.0.2.53\nsearch example.test\n")
	e := &env{t: t, hostPath: h.NetNS, opts: Options{DataRoot: h.DataRoot, ExecRoot: h.ExecRoot,
		HostNetNS: h.NetNS, HostResolvConf: h.ResolvConf, Logger: h.Logger}}
	for _, f := range setup {
		f(e)
	}
	e.open()
	t.Cleanup(e.teardown)
	return e
}

func (e *env) open() {
	e.t.Helper()
	s, err := Open(e.t.Context(), e.opts)
	if err != nil {
		e.t.Fatalf("opening stack: %v", err)
	}
	e.s = s
}

func (e *env) reopen() {
	e.t.Helper()
	if err := e.s.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.open()
}

// teardown removes every sandbox and network so pinned namespaces are unmounted.
func (e *env) teardown() {
	defer e.unpinAll()
	if e.s == nil {
		return
	}
	e.deleteAll()
	e.s.Close()
	e.s = nil
}

// deleteAll removes every sandbox and network through the controller.
func (e *env) deleteAll() { stacktest.DeleteAll(e.t, e.s.Controller) }

// unpinAll removes whatever namespace the controller failed to remove: nothing may
// outlive the test.
func (e *env) unpinAll() { stacktest.Unpin(e.opts.ExecRoot) }

func (e *env) network(spec cnm.NetworkSpec) cnm.Network {
	e.t.Helper()
	n, err := e.s.Controller.CreateNetwork(e.t.Context(), spec)
	if err != nil {
		e.t.Fatalf("creating network %s: %v", spec.Name, err)
	}
	return n
}

// sandbox creates a sandbox connected to the given networks (in order).
func (e *env) sandbox(name string, nets ...string) cnm.Sandbox {
	e.t.Helper()
	c := e.s.Controller
	sb, err := c.CreateSandbox(e.t.Context(), cnm.SandboxSpec{Name: name})
	if err != nil {
		e.t.Fatalf("creating sandbox %s: %v", name, err)
	}
	for _, n := range nets {
		if _, err := c.Connect(e.t.Context(), n, name, cnm.EndpointSpec{}); err != nil {
			e.t.Fatalf("connecting %s to %s: %v", name, n, err)
		}
	}
	return sb
}

// addr returns the sandbox's address on network net (v6 selects IPv6).
func (e *env) addr(sb, net string, v6 bool) netip.Addr {
	e.t.Helper()
	eps, err := e.s.Controller.SandboxEndpoints(e.t.Context(), sb)
	if err != nil {
		e.t.Fatal(err)
	}
	n, err := e.s.Controller.Network(e.t.Context(), net)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, ep := range eps {
		if ep.NetworkID == n.ID {
			if v6 {
				return ep.Addr6.Addr()
			}
			return ep.Addr4.Addr()
		}
	}
	e.t.Fatalf("sandbox %s has no endpoint on %s", sb, net)
	return netip.Addr{}
}

// run runs a command inside the network namespace at key.
func run(key string, args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=" + key, "--"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// listen starts a TCP echo server inside the namespace at key.
func listen(t testing.TB, key string) net.Listener {
	t.Helper()
	ns, err := netns.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", ":7777"); return }); err != nil {
		t.Fatalf("listening in sandbox: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln
}

// dialEcho connects from the namespace at key to addr:7777 and checks the echo.
func dialEcho(key string, addr netip.Addr, timeout time.Duration) error {
	return echo(key, netip.AddrPortFrom(addr, 7777), timeout)
}

// dialIn connects over TCP from the namespace at key to addr.
func dialIn(key string, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	ns, err := netns.Open(key)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	var c net.Conn
	err = ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr.String(), timeout)
		return
	})
	return c, err
}

// echo connects from the namespace at key to addr, sends a line and checks that the
// same line comes back, within timeout (connecting) and timeout again (the echo).
func echo(key string, addr netip.AddrPort, timeout time.Duration) error {
	c, err := dialIn(key, addr, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("hello pier\n")); err != nil {
		return err
	}
	buf := make([]byte, 11)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != "hello pier\n" {
		return fmt.Errorf("echo returned %q", buf)
	}
	return nil
}

// links lists link names in the namespace at key, sorted.
// links lists the link names in the namespace at key once the bridge driver's
// background deletions are done: detached veths wait as "pv-<hex>" tombstones for up
// to a few hundred milliseconds (driver/bridge/reaper.go), and are not state.
func links(t testing.TB, key string) []string {
	t.Helper()
	ns, err := netns.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ls, err := netns.Dump(ns.NL.LinkList)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		tombstones := false
		for _, l := range ls {
			names = append(names, l.Attrs().Name)
			tombstones = tombstones || strings.HasPrefix(l.Attrs().Name, "pv-")
		}
		if !tombstones || time.Now().After(deadline) {
			sort.Strings(names)
			return names
		}
	}
}

// defaultRoutes returns "dev via" of the default routes in the namespace at key.
func defaultRoutes(t testing.TB, key string, family int) []string {
	t.Helper()
	ns, err := netns.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	rs, err := netns.Dump(func() ([]netlink.Route, error) { return ns.NL.RouteList(nil, family) })
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			l, _ := ns.NL.LinkByIndex(r.LinkIndex)
			out = append(out, l.Attrs().Name+" via "+r.Gw.String())
		}
	}
	return out
}

func (e *env) networkB(spec cnm.NetworkSpec) cnm.Network { return e.network(spec) }

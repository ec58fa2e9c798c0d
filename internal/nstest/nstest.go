// Package nstest gives privileged tests a fresh network namespace each, so tests never
// touch the machine's own interfaces, routes or firewall. Everything it creates is
// removed by t.Cleanup, also when the test fails. It also holds the small helpers every
// package's tests share (helpers.go): a logger to t.Log, polling until a deadline, ping
// from a namespace, prefix parsing.
package nstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Require skips the test unless every prerequisite is present, or fails it when the
// environment variable CI is set (.ci/run installs them all, so a missing one there is
// a broken CI machine, not a reason to pass). A prerequisite is "root", "br_netfilter"
// (the kernel module that makes bridged traffic cross the inet hooks) or the name of a
// program that must be on PATH (nft, busybox, docker, ...).
func Require(t testing.TB, prereqs ...string) {
	t.Helper()
	for _, p := range prereqs {
		if why := missing(p); why != "" {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s (CI is set: .ci/run must provide it)", why)
			}
			t.Skipf("%s; .ci/run provides it", why)
		}
	}
}

func missing(prereq string) string {
	switch prereq {
	case "root":
		if os.Geteuid() != 0 {
			return "needs root (network namespaces)"
		}
	case "br_netfilter":
		if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
			return "needs the br_netfilter kernel module (modprobe br_netfilter)"
		}
	default:
		if _, err := exec.LookPath(prereq); err != nil {
			return prereq + " is not installed"
		}
	}
	return ""
}

// New returns a handle to a fresh network namespace that disappears when the test ends.
// Its loopback is up, as on any machine: Go's net package probes IPv6 support once per
// process on ::1, in whichever namespace its first socket is made, and a probe in a
// namespace with lo down would make every later ":port" listener of the test binary
// IPv4-only.
func New(t testing.TB) netns.NsHandle {
	t.Helper()
	Require(t, "root")
	ns, err := create()
	if err != nil {
		t.Fatalf("creating test network namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	if err := loUp(ns); err != nil {
		t.Fatalf("setting lo up in the test namespace: %v", err)
	}
	return ns
}

func loUp(ns netns.NsHandle) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	return h.LinkSetUp(lo)
}

// NewPinned creates a fresh namespace pinned (bind-mounted) at a file in a temp dir and
// returns its path and handle; the mount and file are removed at cleanup.
func NewPinned(t testing.TB) (string, netns.NsHandle) {
	t.Helper()
	ns := New(t)
	path := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(procPath(ns), path, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("pinning namespace: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(path, unix.MNT_DETACH) })
	return path, ns
}

// Do runs fn on an OS thread switched into ns, then switches back.
func Do(t testing.TB, ns netns.NsHandle, fn func()) {
	t.Helper()
	if err := run(ns, fn); err != nil {
		t.Fatalf("entering namespace: %v", err)
	}
}

func procPath(ns netns.NsHandle) string {
	return "/proc/self/fd/" + strconv.Itoa(int(ns))
}

// create makes a namespace on a locked thread and returns the thread to its original
// namespace. If switching back fails the thread stays locked and dies with its goroutine.
func create() (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			ch <- result{err: err}
			return
		}
		if err := netns.Set(orig); err != nil {
			ch <- result{err: err}
			return // thread stays locked: the runtime discards it
		}
		runtime.UnlockOSThread()
		ch <- result{ns: ns}
	}()
	r := <-ch
	return r.ns, r.err
}

func run(ns netns.NsHandle, fn func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		fn()
		if err := netns.Set(orig); err != nil {
			errc <- err
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

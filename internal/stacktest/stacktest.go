// Package stacktest holds the host builder and teardown helpers shared by tests that run
// a real controller:
// whatever a test made must be gone when it ends, also when it fails.
package stacktest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// DeleteAll removes every sandbox, every service and every user-defined network
// through c, reporting failures as test errors.
func DeleteAll(t testing.TB, c *cnm.Controller) {
	t.Helper()
	ctx := context.Background() // t.Context is already cancelled in Cleanup
	for _, sb := range c.Sandboxes(ctx) {
		if err := c.DeleteSandbox(ctx, sb.ID, true); err != nil {
			t.Errorf("cleanup: deleting sandbox %s: %v", sb.Name, err)
		}
	}
	for _, s := range c.Services(ctx) {
		// A global service may be gone already (removed on another node).
		if err := c.DeleteService(ctx, s.ID); err != nil && !errdefs.Is(err, errdefs.KindNotFound) {
			t.Errorf("cleanup: deleting service %s: %v", s.Name, err)
		}
	}
	for _, n := range c.Networks(ctx) {
		if !n.Predefined {
			if err := c.DeleteNetwork(ctx, n.ID); err != nil {
				t.Errorf("cleanup: deleting network %s: %v", n.Name, err)
			}
		}
	}
}

// Unpin removes namespaces still pinned under execRoot/netns (what the controller
// failed to remove must not outlive the test).
func Unpin(execRoot string) {
	pins, _ := filepath.Glob(filepath.Join(execRoot, "netns", "*"))
	pins = append(pins, filepath.Join(execRoot, "wireguard", "netns")) // the tunnel namespace (stack)
	for _, p := range pins {
		_ = netns.Remove(p)
	}
}

// Host is what a test host for a real stack is made of: a fresh pinned network
// namespace (loopback up), data and exec roots in a temp dir, a resolv.conf and a
// logger that reports warnings (or PIER_TEST_LOG's level) to t.Log.
type Host struct {
	NetNS      string // the namespace's pinned path
	DataRoot   string
	ExecRoot   string
	ResolvConf string
	Logger     *slog.Logger
}

// logLevel is the hosts' log level: warnings, or what PIER_TEST_LOG names (debug,
// info) when a test's story is needed.
func logLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("PIER_TEST_LOG"))); err != nil {
		return slog.LevelWarn
	}
	return l
}

// NewHost builds a Host whose resolv.conf holds resolvConf; all of it is removed when
// the test ends.
func NewHost(t testing.TB, resolvConf string) Host {
	t.Helper()
	path, _ := nstest.NewPinned(t)
	dir := t.TempDir()
	h := Host{NetNS: path, DataRoot: filepath.Join(dir, "data"), ExecRoot: filepath.Join(dir, "exec"),
		ResolvConf: filepath.Join(dir, "resolv.conf"), Logger: nstest.Log(t, logLevel())}
	if err := os.WriteFile(h.ResolvConf, []byte(resolvConf), 0o644); err != nil {
		t.Fatal(err)
	}
	return h
}

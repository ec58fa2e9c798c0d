package nstest

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The helpers below are shared by tests of every package, privileged or not; they
// live here because this package imports nothing of pier's (any package's own tests
// may use it).

// Writer returns a writer that sends each write to t.Log, so pier's log lines (or a
// child process's output) show up with the test that produced them.
func Writer(t testing.TB) io.Writer { return logWriter{t} }

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Log returns a text logger writing records of level and above to t.Log.
func Log(t testing.TB, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(Writer(t), &slog.HandlerOptions{Level: level}))
}

// Eventually polls cond until it holds and returns how long that took; after d it
// fails the test, saying what it was waiting for.
func Eventually(t testing.TB, what string, d time.Duration, cond func() bool) time.Duration {
	t.Helper()
	took, ok := Poll(d, cond)
	if !ok {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
	return took
}

// Poll polls cond until it holds (true) or d has passed (false), and returns the time
// it took. The interval is a thousandth of d, from 1 ms to 20 ms.
func Poll(d time.Duration, cond func() bool) (time.Duration, bool) {
	every := min(max(d/1000, time.Millisecond), 20*time.Millisecond)
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(every)
	}
	return time.Since(start), true
}

// Ping sends echoes from the namespace at path to to, one a second for up to 5 s, and
// returns at the first reply: on a loaded machine the first echo can be lost while
// the neighbour is resolved.
func Ping(path string, to netip.Addr) error {
	return ping(path, to, "-w", "5")
}

// PingOnce sends one echo from the namespace at path and waits 2 s for the reply: for
// paths that must be blocked.
func PingOnce(path string, to netip.Addr) error {
	return ping(path, to, "-W", "2")
}

func ping(path string, to netip.Addr, wait ...string) error {
	args := append([]string{"--net=" + path, "--", "ping", "-c", "1"}, wait...)
	out, err := exec.Command("nsenter", append(args, to.String())...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s: %v\n%s", to, err, out)
	}
	return nil
}

// Prefixes parses CIDR prefixes, panicking on a malformed one (test tables).
func Prefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

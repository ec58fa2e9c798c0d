package cli_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/piernet/pier/internal/nstest"
)

// TestSandboxRmForceStopsProcesses: processes started with pier run and pier exec in a
// sandbox (one
// ignoring SIGTERM) are counted by sandbox inspect, keep plain sandbox rm from
// removing it, and are stopped by sandbox rm -f, after which nothing is in the namespace and
// nothing holds it.
func TestSandboxRmForceStopsProcesses(t *testing.T) {
	nstest.Require(t, "root")
	e := startEnv(t, "--sandbox-stop-timeout", "1")
	e.mustPier("network", "create", "procs", "--subnet", "10.91.0.0/24")
	run := e.startPier("run", "--name", "busy", "--network", "procs", "--", "sleep", "300")
	nstest.Eventually(t, "pier run to create sandbox busy", 20*time.Second, func() bool { return e.pier("sandbox", "inspect", "busy").code == 0 })
	key := e.mustPier("sandbox", "inspect", "busy", "-f", "{{.Key}}")
	var st unix.Stat_t
	if err := unix.Stat(key, &st); err != nil {
		t.Fatal(err)
	}
	polite := e.startPier("exec", "busy", "--", "sleep", "300")
	stubborn := e.startPier("exec", "busy", "--", "sh", "-c", `trap "" TERM; exec sleep 300`)
	nstest.Eventually(t, "sandbox inspect to report 3 processes", 20*time.Second, func() bool {
		return e.mustPier("sandbox", "inspect", "busy", "-f", "{{.Processes}}") == "3"
	})

	if r := e.pier("sandbox", "rm", "busy"); r.code != 1 || !strings.Contains(r.err, "sandbox busy has 3 process(es) running in it") {
		t.Fatalf("sandbox rm without -f: %+v, want refused naming the processes", r)
	}
	if got := e.mustPier("sandbox", "rm", "-f", "busy"); got != "busy" {
		t.Fatalf("sandbox rm -f = %q", got)
	}
	if code := run.wait(t); code != 128+int(syscall.SIGTERM) {
		t.Errorf("pier run sleep exited %d, want %d (SIGTERM)", code, 128+int(syscall.SIGTERM))
	}
	if code := polite.wait(t); code != 128+int(syscall.SIGTERM) {
		t.Errorf("pier exec sleep exited %d, want %d (SIGTERM)", code, 128+int(syscall.SIGTERM))
	}
	if code := stubborn.wait(t); code != 128+int(syscall.SIGKILL) {
		t.Errorf("pier exec of a TERM-ignoring sleep exited %d, want %d (SIGKILL after the grace period)", code, 128+int(syscall.SIGKILL))
	}
	if holders := nsHolders(st); len(holders) > 0 {
		t.Errorf("the removed sandbox's namespace is still held by %v", holders)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(key, &fs); err == nil && fs.Type == unix.NSFS_MAGIC {
		t.Errorf("%s is still pinned", key)
	}
}

// nsHolders lists the /proc entries (ns/net links and open file descriptors) that refer
// to the namespace whose nsfs file is st.
func nsHolders(st unix.Stat_t) []string {
	var out []string
	nets, _ := filepath.Glob("/proc/[0-9]*/ns/net")
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, p := range append(nets, fds...) {
		var s unix.Stat_t
		if unix.Stat(p, &s) == nil && s.Dev == st.Dev && s.Ino == st.Ino {
			out = append(out, p)
		}
	}
	return out
}

// startPier starts pier in the background; wait returns its exit status.
func (e *env) startPier(args ...string) *background {
	b := &background{out: e.logFile(strings.ReplaceAll(strings.Join(args, "_"), "/", "_")[:20] + ".log"), done: make(chan struct{})}
	b.cmd = exec.Command(e.pierBin, args...)
	b.cmd.Env = append(os.Environ(), "PIER_HOST=unix://"+e.sock)
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.out
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := b.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = b.cmd.Wait(); close(b.done) }()
	e.t.Cleanup(func() {
		_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		<-b.done
	})
	return b
}

func (b *background) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-b.done:
		return b.cmd.ProcessState.ExitCode()
	case <-time.After(20 * time.Second):
		t.Fatalf("pier %v still runs:\n%s", b.cmd.Args, readLog(b.out))
		return -1
	}
}

package netns

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/piernet/pier/internal/nstest"
)

// TestStopProcesses starts processes in a sandbox namespace (one ignoring SIGTERM) and
// one outside it: Stop ends exactly the two inside, the TERM-ignoring one by SIGKILL.
func TestStopProcesses(t *testing.T) {
	nstest.Require(t, "root")
	m, key, hostPath := newManager(t)

	polite := start(t, "nsenter", "--net="+key, "--", "sleep", "300")
	stubborn := start(t, "nsenter", "--net="+key, "--", "sh", "-c", `trap "" TERM; exec sleep 300`)
	outside := start(t, "nsenter", "--net="+hostPath, "--", "sleep", "300")
	want := []int{polite.pid, stubborn.pid}
	slices.Sort(want)
	// Both must have exec'd sleep: before that the stubborn one's shell may not have
	// set its trap yet, and a TERM would end it.
	nstest.Eventually(t, fmt.Sprintf("processes %v in the namespace, running sleep", want), 10*time.Second, func() bool {
		pids, err := m.procs.In(key)
		return err == nil && slices.Equal(pids, want) && isSleep(polite.pid) && isSleep(stubborn.pid)
	})
	if n, err := m.Processes(t.Context(), key); n != 2 || err != nil {
		t.Fatalf("Processes = %d, %v; want 2", n, err)
	}
	if n, err := m.Processes(t.Context(), m.HostKey()); n != 0 || err != nil {
		t.Fatalf("Processes(host) = %d, %v; the host's processes are not a sandbox's", n, err)
	}

	n, err := m.StopProcesses(t.Context(), key, 200*time.Millisecond)
	if n != 2 || err != nil {
		t.Fatalf("StopProcesses = %d, %v; want 2", n, err)
	}
	if sig := polite.signal(t); sig != syscall.SIGTERM {
		t.Errorf("sleep ended by %v, want SIGTERM", sig)
	}
	if sig := stubborn.signal(t); sig != syscall.SIGKILL {
		t.Errorf("TERM-ignoring sleep ended by %v, want SIGKILL after the grace period", sig)
	}
	select {
	case <-outside.done:
		t.Errorf("the process outside the sandbox was stopped too")
	default:
	}
	if pids, err := m.procs.In(key); len(pids) != 0 || err != nil {
		t.Errorf("left in the namespace: %v, %v", pids, err)
	}
}

type proc struct {
	pid  int
	cmd  *exec.Cmd
	done chan struct{}
}

func start(t *testing.T, argv ...string) *proc {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-p.done })
	return p
}

// signal waits for the process to end and returns the signal that ended it.
func (p *proc) signal(t *testing.T) syscall.Signal {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("process %d still runs", p.pid)
	}
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		t.Fatalf("process %d exited without a signal: %v", p.pid, p.cmd.ProcessState)
	}
	return ws.Signal()
}

func isSleep(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && string(comm) == "sleep\n"
}

package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Procs finds and stops the processes whose network namespace is a given one, by
// comparing /proc/PID/ns/net with the namespace's inode. It never signals its own
// process (pierd holds sockets in sandboxes, it does not run in them).
type Procs struct {
	// Root is the proc filesystem ("" = /proc); tests point it elsewhere.
	Root string
	// Signal sends sig to pid (nil = kill(2)).
	Signal func(pid int, sig unix.Signal) error
	// Poll is how often Stop looks whether the processes are gone (0 = 10 ms).
	Poll time.Duration
}

// nsID identifies a namespace: device and inode of its nsfs file.
type nsID struct{ dev, ino uint64 }

func statNS(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

func (p Procs) root() string {
	if p.Root == "" {
		return "/proc"
	}
	return p.Root
}

// In returns the PIDs of the processes running in the namespace at key.
func (p Procs) In(key string) ([]int, error) {
	id, err := statNS(key)
	if err != nil {
		return nil, fmt.Errorf("reading namespace %s: %w", key, err)
	}
	return p.in(id)
}

func (p Procs) in(id nsID) ([]int, error) {
	entries, err := os.ReadDir(p.root())
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		// A process that exited meanwhile, or a zombie (its namespaces are released),
		// fails the stat: it is not in the namespace.
		if got, err := statNS(filepath.Join(p.root(), e.Name(), "ns", "net")); err == nil && got == id {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Stop ends every process in the namespace at key: SIGTERM, then SIGKILL to those still
// there after grace. It returns how many processes it found. A namespace that does not
// exist has no processes.
func (p Procs) Stop(ctx context.Context, key string, grace time.Duration) (int, error) {
	id, err := statNS(key)
	if errors.Is(err, unix.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading namespace %s: %w", key, err)
	}
	pids, err := p.in(id)
	if err != nil || len(pids) == 0 {
		return 0, err
	}
	p.signal(pids, unix.SIGTERM)
	left, err := p.waitGone(ctx, id, grace)
	if err != nil || len(left) == 0 {
		return len(pids), err
	}
	p.signal(left, unix.SIGKILL)
	if left, err = p.waitGone(ctx, id, 5*time.Second); err == nil && len(left) > 0 {
		err = fmt.Errorf("%d process(es) still in namespace %s after SIGKILL: %v", len(left), key, left)
	}
	return len(pids), err
}

func (p Procs) signal(pids []int, sig unix.Signal) {
	send := p.Signal
	if send == nil {
		send = unix.Kill
	}
	for _, pid := range pids {
		_ = send(pid, sig) // ESRCH: it exited meanwhile
	}
}

// waitGone polls until no process is in the namespace or d has passed, returning those
// still there.
func (p Procs) waitGone(ctx context.Context, id nsID, d time.Duration) ([]int, error) {
	poll := p.Poll
	if poll == 0 {
		poll = 10 * time.Millisecond
	}
	deadline := time.Now().Add(d)
	for {
		left, err := p.in(id)
		if err != nil || len(left) == 0 || !time.Now().Before(deadline) {
			return left, err
		}
		select {
		case <-ctx.Done():
			return left, ctx.Err()
		case <-time.After(poll):
		}
	}
}

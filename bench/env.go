package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// nsPrefix names every network namespace the benchmark creates.
const nsPrefix = "pierbench-"

// The namespaces: one per daemon (its "host"), and two for the raw veth baseline.
const (
	nsPier   = nsPrefix + "pier"
	nsDocker = nsPrefix + "docker"
	nsVethA  = nsPrefix + "va"
	nsVethB  = nsPrefix + "vb"
)

func nsPath(name string) string { return "/run/netns/" + name }

// run runs a command and returns its combined output, with the output in the error.
func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// inNetns builds a command that runs argv in the network namespace at path (and
// only that: nsenter keeps the mount namespace, unlike `ip netns exec`, so
// pierd's namespace pins stay visible to everyone).
func inNetns(ctx context.Context, path string, argv ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + path, "--"}, argv...)...)
}

// runIn runs argv in the network namespace at path and returns its output.
func runIn(ctx context.Context, path string, argv ...string) (string, error) {
	return run(ctx, "nsenter", append([]string{"--net=" + path, "--"}, argv...)...)
}

// addNetns creates a named network namespace with loopback up.
func addNetns(ctx context.Context, name string) error {
	if _, err := run(ctx, "ip", "netns", "add", name); err != nil {
		return err
	}
	_, err := run(ctx, "ip", "-n", name, "link", "set", "lo", "up")
	return err
}

// sweep removes everything a run (this one, or an earlier one that was killed)
// left: processes in the pierbench namespaces and their descendants (SIGKILL, by
// PID), mounts under workDir, the namespaces, and workDir itself. It is idempotent
// and reports what it could not remove.
func sweep(ctx context.Context, workDir string, skip map[int]bool) error {
	return sweepPrefix(ctx, nsPrefix, workDir, skip)
}

// sweepPrefix is sweep for the namespaces whose names start with prefix.
func sweepPrefix(ctx context.Context, prefix, workDir string, skip map[int]bool) error {
	var errs []error
	inos := map[uint64]bool{}
	names := netnsNames(prefix)
	for _, n := range names {
		if ino, err := nsInode(nsPath(n)); err == nil {
			inos[ino] = true
		}
	}
	if len(inos) > 0 {
		errs = append(errs, killIn(ctx, inos, skip))
	}
	errs = append(errs, unmountUnder(workDir))
	for _, n := range names {
		if _, err := run(ctx, "ip", "netns", "delete", n); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(workDir); err != nil {
		errs = append(errs, fmt.Errorf("removing %s: %w", workDir, err))
	}
	return errors.Join(errs...)
}

// killIn SIGKILLs the processes in the namespaces inos (and their descendants) and
// waits up to 10 s for them to go.
func killIn(ctx context.Context, inos map[uint64]bool, skip map[int]bool) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		all, err := listProcs()
		if err != nil {
			return err
		}
		left := procsIn(all, inos, skip)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%d processes in the benchmark's namespaces did not exit (first: %d %s)", len(left), left[0].PID, left[0].Comm)
		}
		for _, p := range left {
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// unmountUnder detaches every mount at or below dir (deepest first) in the
// benchmark's mount namespace (pierd's namespace pins live there).
func unmountUnder(dir string) error {
	if dir == "" || dir == "/" {
		return fmt.Errorf("refusing to unmount under %q", dir)
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	slices.SortFunc(points, func(a, b string) int { return len(b) - len(a) })
	var errs []error
	for _, mp := range slices.Compact(points) {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// lockRun takes an exclusive lock so two runs never share namespaces or the work
// directory. The lock goes with the process.
func lockRun(workDir string) (*os.File, error) {
	path := filepath.Clean(workDir) + ".lock"
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another benchmark run holds %s: %w", path, err)
	}
	return f, nil
}

package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// daemon is a long-running process the benchmark started (pierd, dockerd, dnsmasq,
// an iperf3 server). Its PID is the daemon's own: nsenter, unshare and sh exec.
type daemon struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid after done
}

// startProc starts argv with its output in logPath. It is not bound to a context:
// stop ends it (gracefully first), so Ctrl-C cannot kill it before cleanup.
func startProc(name, logPath string, argv ...string) (*daemon, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C on the terminal reaches the benchmark only.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		d.waitErr = cmd.Wait()
		logf.Close()
		close(d.done)
	}()
	return d, nil
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to timeout, then SIGKILLs. It is idempotent.
func (d *daemon) stop(timeout time.Duration) error {
	if d == nil || d.exited() {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(timeout):
	}
	_ = d.cmd.Process.Kill()
	<-d.done
	return fmt.Errorf("%s (pid %d) did not stop within %s after SIGTERM; killed", d.name, d.pid(), timeout)
}

// logTail returns the last lines of the daemon's log, for error messages.
func (d *daemon) logTail(n int) string {
	data, _ := os.ReadFile(d.logPath)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitSocket waits until the unix socket at path accepts connections, the daemon
// exits, or timeout passes.
func (d *daemon) waitSocket(ctx context.Context, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return nil
		}
		if d.exited() {
			return fmt.Errorf("%s exited during start-up (%v); last log lines:\n%s", d.name, d.waitErr, d.logTail(15))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not listen on %s within %s; last log lines:\n%s", d.name, path, timeout, d.logTail(15))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// daemonPaths are one daemon's directories and socket under the work directory.
type daemonPaths struct {
	dir, data, exec, sock, log string
}

func pathsFor(workDir, name string) daemonPaths {
	dir := filepath.Join(workDir, name)
	return daemonPaths{dir: dir, data: filepath.Join(dir, "data"), exec: filepath.Join(dir, "exec"),
		sock: filepath.Join(dir, name+".sock"), log: filepath.Join(dir, name+".log")}
}

// startPierd starts pierd in the namespace nsPier with its own roots and socket.
func startPierd(ctx context.Context, pierd string, p daemonPaths) (*daemon, error) {
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return nil, err
	}
	d, err := startProc("pierd", p.log, "nsenter", "--net="+nsPath(nsPier), "--",
		pierd, "--data-root", p.data, "--exec-root", p.exec, "-H", "unix://"+p.sock)
	if err != nil {
		return nil, err
	}
	if err := d.waitSocket(ctx, p.sock, 30*time.Second); err != nil {
		return d, err
	}
	return d, nil
}

// startDockerd starts dockerd in the namespace nsDocker and in a private mount
// namespace whose /run is a fresh tmpfs, so dockerd's hard-coded /run/docker paths,
// its container mounts and namespace pins never appear on the machine. Its trust
// key goes to the work directory (deprecated-key-path) instead of /etc/docker.
func startDockerd(ctx context.Context, p daemonPaths) (*daemon, error) {
	return startDockerdIn(ctx, nsPath(nsDocker), p)
}

// startDnsmasq runs the upstream DNS server of the DNS scenario in the namespace
// at ns, on addr, answering hosts (name → IPv4) itself with a 600 s TTL (dnsmasq's
// default for its own records is 0, which no cache could keep).
func startDnsmasq(dir, ns, addr string, hosts map[string]string) (*daemon, error) {
	argv := []string{"nsenter", "--net=" + ns, "--", "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
		"--no-hosts", "--no-resolv", "--bind-interfaces", "--listen-address=" + addr, "--port=53",
		"--user=root", "--local-ttl=600", "--cache-size=10000", "--dns-forward-max=1000",
		"--pid-file=" + filepath.Join(dir, "dnsmasq.pid")}
	for name, ip := range hosts {
		argv = append(argv, "--host-record="+name+","+ip)
	}
	d, err := startProc("dnsmasq", filepath.Join(dir, "dnsmasq.log"), argv...)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// stopAll stops daemons in reverse order and joins their errors.
func stopAll(ds []*daemon, timeout time.Duration) error {
	var errs []error
	for i := len(ds) - 1; i >= 0; i-- {
		errs = append(errs, ds[i].stop(timeout))
	}
	return errors.Join(errs...)
}

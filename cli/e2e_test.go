package cli_test

import (
	"bytes"
	"errors"
	"fmt"
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

// TestEndToEnd drives a real pierd (in its own network namespace, with temp roots and
// socket) with the real pier binary: networks, sandboxes, and HTTP traffic between
// two `pier run` sandboxes.
func TestEndToEnd(t *testing.T) {
	nstest.Require(t, "root", "nsenter", "busybox")
	e := startEnv(t)

	id := e.mustPier("network", "create", "app", "--subnet", "10.89.0.0/24")
	if ls := e.mustPier("network", "ls"); !strings.Contains(ls, id[:12]+"   app       bridge    local") {
		t.Errorf("network ls does not list app:\n%s", ls)
	}
	if got := e.mustPier("network", "inspect", "app", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}"); got != "10.89.0.0/24" {
		t.Errorf("inspect subnet = %q", got)
	}

	web := e.startWeb()
	ip := e.waitSandboxIP("web")
	page := e.waitPage(ip)
	t.Logf("wget http://%s/ from a second sandbox: %q", ip, page)
	// By name, through the embedded DNS: the README's example.
	if got := e.mustPier("run", "--rm", "--network", "app", "--", "busybox", "wget", "-qO-", "http://web/"); got != "hello from web" {
		t.Errorf("wget http://web/ = %q", got)
	}
	// The published port: listed by pier port, served on the host's loopback.
	if got := e.mustPier("port", "web"); !strings.Contains(got, "80/tcp -> 0.0.0.0:8080") {
		t.Errorf("pier port web = %q", got)
	}
	if out, err := exec.Command("nsenter", "--net="+e.hostNS, "busybox", "wget", "-qO-", "http://127.0.0.1:8080/").CombinedOutput(); err != nil || string(out) != "hello from web\n" {
		t.Errorf("wget of the published port from the host: %q %v", out, err)
	}

	hostname := e.mustPier("sandbox", "inspect", "web", "-f", "{{.Hostname}}")
	if got := e.mustPier("exec", "web", "--", "cat", "/etc/hostname"); got != hostname {
		t.Errorf("exec cat /etc/hostname = %q, want %q", got, hostname)
	}
	if r := e.pier("exec", "web", "--", "sh", "-c", "exit 7"); r.code != 7 {
		t.Errorf("exec exit 7: %+v", r)
	}
	if ls := e.mustPier("sandbox", "ls"); !strings.Contains(ls, "web") || !strings.Contains(ls, ip) {
		t.Errorf("sandbox ls does not show web with %s:\n%s", ip, ls)
	}
	e.checkSandboxCommands()
	if r := e.pier("network", "rm", "app"); r.code != 1 || !strings.Contains(r.err, "Error response from pierd:") {
		t.Errorf("network rm of a network in use: %+v, want status 1 and the server's message", r)
	} else {
		t.Logf("network rm while in use: %s", strings.TrimSpace(r.err))
	}

	if code := web.stop(); code != 128+int(syscall.SIGTERM) {
		t.Errorf("pier run exited %d after SIGTERM, want %d (output %s)", code, 128+int(syscall.SIGTERM), readLog(web.out))
	}
	if left := e.mustPier("sandbox", "ls", "-q"); left != "" {
		t.Errorf("sandboxes left after --rm: %q", left)
	}
	if got := e.mustPier("network", "rm", "app"); got != "app" {
		t.Errorf("network rm = %q", got)
	}
}

// checkSandboxCommands creates a sandbox with a static address, reaches it from web,
// connects and disconnects a second network, prunes it and removes the sandbox.
func (e *env) checkSandboxCommands() {
	e.mustPier("sandbox", "create", "--name", "s2", "--network", "app", "--ip", "10.89.0.50", "--alias", "db")
	e.mustPier("exec", "web", "--", "ping", "-c1", "-W2", "10.89.0.50")
	e.mustPier("network", "create", "other", "--subnet", "10.90.0.0/24")
	e.mustPier("network", "connect", "--ip", "10.90.0.9", "other", "s2")
	eps := e.mustPier("sandbox", "inspect", "s2", "-f", "{{range .Endpoints}}{{.Network}}={{.IPv4Address}} {{end}}")
	if eps != "app=10.89.0.50/24 other=10.90.0.9/24" {
		e.t.Errorf("s2 endpoints = %q", eps)
	}
	if got := e.mustPier("network", "inspect", "other", "-f", "{{range .Containers}}{{.Name}}{{end}}"); got != "s2" {
		e.t.Errorf("other's sandboxes = %q, want s2", got)
	}
	e.mustPier("network", "disconnect", "other", "s2")
	if got := e.mustPier("network", "prune", "-f"); got != "Deleted Networks:\nother" {
		e.t.Errorf("prune = %q", got)
	}
	if got := e.mustPier("sandbox", "rm", "-f", "s2"); got != "s2" {
		e.t.Errorf("sandbox rm = %q", got)
	}
}

// env is one pierd and the pier binary that talks to it.
type env struct {
	t        *testing.T
	dir      string
	pierBin  string
	sock     string
	execRoot string
	hostNS   string // pierd's network namespace
}

type pierResult struct {
	out, err string
	code     int
}

func startEnv(t *testing.T, pierdArgs ...string) *env {
	t.Helper()
	dir := t.TempDir()
	for _, pkg := range []string{"pier", "pierd"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, pkg), "../cmd/"+pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("building %s: %v\n%s", pkg, err, out)
		}
	}
	e := &env{t: t, dir: dir, pierBin: filepath.Join(dir, "pier"), sock: filepath.Join(dir, "pier.sock"),
		execRoot: filepath.Join(dir, "exec")}
	hostNS, _ := nstest.NewPinned(t) // pierd's "host" namespace, never the machine's
	e.hostNS = hostNS
	if out, err := exec.Command("nsenter", "--net="+hostNS, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("loopback up in the host namespace: %v %s", err, out)
	}
	log := e.logFile("pierd.log")
	cmd := exec.Command("nsenter", append([]string{"--net=" + hostNS, "--", filepath.Join(dir, "pierd"),
		"--data-root", filepath.Join(dir, "data"), "--exec-root", e.execRoot, "-H", "unix://" + e.sock}, pierdArgs...)...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // ends with pierd
	t.Cleanup(func() { e.stopPierd(cmd, exited, log) })
	e.waitReady(exited, log)
	return e
}

// waitReady polls `pier network ls` until pierd answers.
func (e *env) waitReady(exited chan struct{}, log *os.File) {
	if _, ok := nstest.Poll(20*time.Second, func() bool {
		select {
		case <-exited:
			e.t.Fatalf("pierd exited during start:\n%s", readLog(log))
		default:
		}
		return e.pier("network", "ls", "-q").code == 0
	}); ok {
		return
	}
	e.t.Fatalf("pierd did not answer on %s within 20s:\n%s", e.sock, readLog(log))
}

// stopPierd stops pierd (SIGTERM, then SIGKILL) and unmounts what it left.
func (e *env) stopPierd(cmd *exec.Cmd, exited chan struct{}, log *os.File) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
	if e.t.Failed() {
		e.t.Logf("pierd log:\n%s", readLog(log))
	}
	pins, _ := filepath.Glob(filepath.Join(e.execRoot, "netns", "*"))
	for _, p := range pins {
		_ = unix.Unmount(p, unix.MNT_DETACH)
	}
}

// logFile creates a file for a background process's output (files need no locking).
func (e *env) logFile(name string) *os.File {
	f, err := os.Create(filepath.Join(e.dir, name))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { f.Close() })
	return f
}

func readLog(f *os.File) string {
	data, _ := os.ReadFile(f.Name())
	return string(data)
}

// pier runs the pier binary; PIER_HOST points it at this pierd.
func (e *env) pier(args ...string) pierResult {
	cmd := exec.Command(e.pierBin, args...)
	cmd.Env = append(os.Environ(), "PIER_HOST=unix://"+e.sock)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	r := pierResult{out: out.String(), err: errOut.String()}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		r.code = exitErr.ExitCode()
	} else if err != nil {
		e.t.Fatalf("running pier: %v", err)
	}
	return r
}

// mustPier runs pier, fails the test on a non-zero status, and returns the trimmed
// output.
func (e *env) mustPier(args ...string) string {
	e.t.Helper()
	r := e.pier(args...)
	if r.code != 0 {
		e.t.Fatalf("pier %s: status %d\n%s%s", strings.Join(args, " "), r.code, r.out, r.err)
	}
	return strings.TrimSpace(r.out)
}

// background is a `pier run` in the background.
type background struct {
	cmd  *exec.Cmd
	out  *os.File
	done chan struct{}
}

// startWeb starts `pier run --rm --network app --name web -- busybox httpd` serving
// a page from a temp dir.
func (e *env) startWeb() *background {
	www := filepath.Join(e.dir, "www")
	if err := os.MkdirAll(www, 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte("hello from web\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	b := &background{out: e.logFile("web.log"), done: make(chan struct{})}
	b.cmd = exec.Command(e.pierBin, "run", "--rm", "--network", "app", "--name", "web", "-p", "8080:80", "--",
		"busybox", "httpd", "-f", "-p", "80", "-h", www)
	b.cmd.Env = append(os.Environ(), "PIER_HOST=unix://"+e.sock)
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.out
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // so cleanup can kill httpd too
	if err := b.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = b.cmd.Wait(); close(b.done) }() // ends with pier run
	e.t.Cleanup(func() {
		_ = syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		<-b.done
	})
	return b
}

// stop sends SIGTERM to pier run and returns its exit status.
func (b *background) stop() int {
	_ = b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.done:
		return b.cmd.ProcessState.ExitCode()
	case <-time.After(30 * time.Second):
		return -1
	}
}

// waitSandboxIP polls until sandbox name exists and returns its first IPv4 address.
func (e *env) waitSandboxIP(name string) string {
	var addr string
	if _, ok := nstest.Poll(20*time.Second, func() bool {
		r := e.pier("sandbox", "inspect", name, "-f", "{{range .Endpoints}}{{.IPv4Address}} {{end}}")
		a, _, ok := strings.Cut(strings.TrimSpace(r.out), "/")
		addr = a
		return r.code == 0 && ok
	}); !ok {
		e.t.Fatalf("sandbox %s did not appear within 20s", name)
	}
	return addr
}

// waitPage fetches http://ip/ from a second `pier run --rm` sandbox until httpd answers.
func (e *env) waitPage(ip string) string {
	var last pierResult
	if _, ok := nstest.Poll(20*time.Second, func() bool {
		last = e.pier("run", "--rm", "--network", "app", "--", "busybox", "wget", "-qO-", fmt.Sprintf("http://%s/", ip))
		return last.code == 0
	}); !ok {
		e.t.Fatalf("wget http://%s/ failed for 20s; last: %+v", ip, last)
	}
	if last.out != "hello from web\n" {
		e.t.Fatalf("wget got %q", last.out)
	}
	return last.out
}

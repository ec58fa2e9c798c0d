package cli_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/piernet/pier/internal/nstest"
)

// TestServiceEndToEnd drives services with the real pier binary: a VIP service with
// three busybox httpd tasks, answers by name through the VIP, dig answers for the
// name and tasks.NAME, the listing, and removal rules.
func TestServiceEndToEnd(t *testing.T) {
	nstest.Require(t, "root", "nsenter", "busybox", "dig")
	e := startEnv(t)
	e.mustPier("network", "create", "app", "--subnet", "10.91.0.0/24")
	e.mustPier("service", "create", "web", "--network", "app", "--port", "80/tcp")
	vip := e.mustPier("service", "inspect", "web", "-f", "{{range .VirtualIPs}}{{.Addr}}{{end}}")
	vipAddr, _, _ := strings.Cut(vip, "/")
	var taskIPs []string
	for _, name := range []string{"web1", "web2", "web3"} {
		e.mustPier("sandbox", "create", "--name", name, "--service", "web")
		if name == "web1" {
			// Nothing listens on 80 in it yet: it is starting, and not counted as serving.
			if got := e.mustPier("sandbox", "inspect", "web1", "-f", "{{.Service}} {{.Starting}}"); got != "web true" {
				t.Errorf("sandbox inspect of a task before its server runs: %q, want \"web true\"", got)
			}
			if ls := e.mustPier("service", "ls"); !strings.Contains(ls, "0/1") {
				t.Errorf("service ls with a starting task:\n%s", ls)
			}
		}
		e.startTaskServer(name)
		taskIPs = append(taskIPs, e.waitSandboxIP(name))
	}
	slices.Sort(taskIPs)
	var ls string
	if _, ok := nstest.Poll(10*time.Second, func() bool { ls = e.mustPier("service", "ls"); return strings.Contains(ls, "3/3") }); !ok ||
		!strings.Contains(ls, "web") || !strings.Contains(ls, "app="+vip) {
		t.Errorf("service ls once the three servers listen:\n%s", ls)
	}

	// Names, with dig inside a sandbox on the network (through 127.0.0.11).
	if got := e.mustPier("run", "--rm", "--network", "app", "--", "dig", "+short", "web"); got != vipAddr {
		t.Errorf("dig web = %q, want the VIP %s", got, vipAddr)
	}
	got := strings.Fields(e.mustPier("run", "--rm", "--network", "app", "--", "dig", "+short", "tasks.web"))
	slices.Sort(got)
	if !slices.Equal(got, taskIPs) {
		t.Errorf("dig tasks.web = %v, want %v", got, taskIPs)
	}

	// One client sandbox, 30 requests by name: every task answers some (a task left
	// out by a fair balancer: probability 3 × (2/3)^30 ≈ 2e-5).
	e.mustPier("sandbox", "create", "--name", "client", "--network", "app")
	seen := map[string]int{}
	for range 30 {
		page := e.waitServed("client", "http://web/")
		seen[strings.TrimSpace(page)]++
	}
	for _, name := range []string{"web1", "web2", "web3"} {
		if seen["task "+name] == 0 {
			t.Errorf("task %s never answered: %v", name, seen)
		}
	}
	t.Logf("30 requests to http://web/: %v", seen)

	if r := e.pier("service", "rm", "web"); r.code != 1 || !strings.Contains(r.err, "remove them first") {
		t.Errorf("service rm with tasks: %+v", r)
	}
	e.mustPier("sandbox", "rm", "-f", "web1", "web2", "web3", "client")
	if got := e.mustPier("service", "rm", "web"); got != "web" {
		t.Errorf("service rm = %q", got)
	}
	if r := e.pier("service", "inspect", "web"); r.code != 1 {
		t.Errorf("service inspect after rm: %+v", r)
	}
	e.mustPier("network", "rm", "app")
}

// startTaskServer runs busybox httpd inside task sandbox name, serving "task NAME".
func (e *env) startTaskServer(name string) {
	dir := filepath.Join(e.dir, "www-"+name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte("task "+name+"\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(e.pierBin, "exec", name, "--", "busybox", "httpd", "-f", "-p", "80", "-h", dir)
	cmd.Env = append(os.Environ(), "PIER_HOST=unix://"+e.sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	e.t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	})
}

// waitServed fetches url from inside sandbox sb until it answers (a task's httpd may
// still be starting).
func (e *env) waitServed(sb, url string) string {
	var last pierResult
	if _, ok := nstest.Poll(20*time.Second, func() bool {
		last = e.pier("exec", sb, "--", "busybox", "wget", "-qO-", url)
		return last.code == 0
	}); !ok {
		e.t.Fatalf("wget %s from %s failed for 20s; last: %+v", url, sb, last)
	}
	return last.out
}

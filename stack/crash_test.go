package stack

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/netns"
)

// TestMain lets the test binary double as the crashing controller process.
func TestMain(m *testing.M) {
	if os.Getenv("PIER_CRASH_CHILD") == "1" {
		crashChild()
		return
	}
	os.Exit(m.Run())
}

// crashChild churns networks and sandboxes until it is killed.
func crashChild() {
	ctx := context.Background()
	s, err := Open(ctx, Options{DataRoot: os.Getenv("PIER_DATA"), ExecRoot: os.Getenv("PIER_EXEC"),
		HostNetNS: os.Getenv("PIER_HOST"), HostResolvConf: "/dev/null"})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	c := s.Controller
	for i := 0; ; i++ {
		churn(ctx, c, i)
		if i == 2 {
			fmt.Println("ready")
		}
	}
}

func churn(ctx context.Context, c *cnm.Controller, i int) {
	net, sb := fmt.Sprintf("n%d", i%4), fmt.Sprintf("s%d", i%5)
	_, _ = c.CreateNetwork(ctx, cnm.NetworkSpec{Name: net, EnableIPv6: i%2 == 0})
	_, _ = c.CreateSandbox(ctx, cnm.SandboxSpec{Name: sb})
	_, _ = c.Connect(ctx, net, sb, cnm.EndpointSpec{})
	_, _ = c.Connect(ctx, fmt.Sprintf("n%d", (i+1)%4), sb, cnm.EndpointSpec{})
	if i%3 == 2 {
		_ = c.DeleteSandbox(ctx, fmt.Sprintf("s%d", (i+2)%5), true)
		_ = c.DeleteNetwork(ctx, fmt.Sprintf("n%d", (i+2)%4))
	}
}

func TestSIGKILLMidOperationRestoresAndLeaksNothing(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			e := newEnv(t)
			if err := e.s.Close(); err != nil { // the child owns the data root now
				t.Fatal(err)
			}
			e.s = nil
			killChildMidway(t, e, time.Duration(5+rand.IntN(150))*time.Millisecond)
			e.open()
			checkConsistent(t, e)
			e.deleteAll()
			e.s.Close()
			e.s = nil
			checkEmpty(t, e)
		})
	}
}

func killChildMidway(t *testing.T, e *env, delay time.Duration) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PIER_CRASH_CHILD=1", "PIER_DATA="+e.opts.DataRoot,
		"PIER_EXEC="+e.opts.ExecRoot, "PIER_HOST="+e.hostPath)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("crash child: %q", line)
	}
	time.Sleep(delay) // lets the child get somewhere random in its churn
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
}

// checkConsistent proves the kernel matches the records exactly after the restart.
func checkConsistent(t *testing.T, e *env) {
	t.Helper()
	ctx := t.Context()
	c := e.s.Controller
	want := map[string]bool{"lo": true}
	for _, n := range c.Networks(ctx) {
		want["br-"+n.ID[:12]] = true
		eps, _ := c.Endpoints(ctx, n.ID)
		for _, ep := range eps {
			if ep.SandboxID != "" {
				want["pv"+ep.ID[:12]] = true
			}
		}
	}
	got := map[string]bool{}
	for _, l := range e.hostLinks() {
		got[l] = true
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("host links after crash+restart = %v, want exactly %v", keys(got), keys(want))
	}
	checkSandboxes(t, e)
	checkFirewall(t, e, len(c.Networks(ctx)))
}

func checkSandboxes(t *testing.T, e *env) {
	t.Helper()
	ctx := t.Context()
	c := e.s.Controller
	pins, _ := filepath.Glob(filepath.Join(e.opts.ExecRoot, "netns", "*"))
	if len(pins) != len(c.Sandboxes(ctx)) {
		t.Errorf("%d pinned namespaces for %d sandboxes", len(pins), len(c.Sandboxes(ctx)))
	}
	for _, sb := range c.Sandboxes(ctx) {
		eps, _ := c.SandboxEndpoints(ctx, sb.ID)
		inside := strings.Join(links(t, sb.Key), " ")
		for _, ep := range eps {
			if !strings.Contains(inside, ep.IfName) {
				t.Errorf("sandbox %s lacks %s (has %s)", sb.Name, ep.IfName, inside)
			}
		}
	}
}

func checkFirewall(t *testing.T, e *env, networks int) {
	t.Helper()
	if got := len(e.s.Firewall.State().Bridges); got != networks {
		t.Errorf("firewall has %d bridges for %d networks", got, networks)
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return
	}
	out, err := run(e.hostPath, "nft", "list", "set", "inet", "pier", "bridges")
	if err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	if got := strings.Count(out, "\"br-"); got != networks {
		t.Errorf("kernel set bridges has %d bridges for %d networks:\n%s", got, networks, out)
	}
}

// checkEmpty proves that deleting everything leaves nothing behind.
func checkEmpty(t *testing.T, e *env) {
	t.Helper()
	if got := e.hostLinks(); len(got) != 1 {
		t.Errorf("host links after deleting everything: %v", got)
	}
	pins, _ := filepath.Glob(filepath.Join(e.opts.ExecRoot, "netns", "*"))
	if len(pins) != 0 {
		t.Errorf("pinned namespaces left: %v", pins)
	}
	e.open()
	defer e.teardown()
	// Every pool was released: the first automatic pool is free again.
	n, err := e.s.Controller.CreateNetwork(t.Context(), cnm.NetworkSpec{Name: "again"})
	if err != nil || n.IPv4[0].Subnet.String() != "172.17.0.0/16" {
		t.Errorf("first network after cleanup: %v %v, want 172.17.0.0/16", n.IPv4, err)
	}
	if out, err := run(e.hostPath, "nft", "list", "set", "inet", "pier", "masq4"); err == nil && strings.Count(out, "172.") != 1 {
		t.Errorf("masquerade set not clean:\n%s", out)
	}
	_ = netns.Remove
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

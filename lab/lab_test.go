package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/client"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/nstest"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds pier and pierd once per test binary.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "pier-lab-bin-")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{"pier", "pierd"} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, pkg), "../cmd/"+pkg).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("building %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// up builds a lab of n hosts under a temporary root and tears it down at the end.
func up(t *testing.T, n int, external ...bool) *Lab {
	t.Helper()
	nstest.Require(t, "root", "nsenter", "docker")
	bin := binaries(t)
	root, err := os.MkdirTemp("", "plab")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	o := Options{Name: "t", Hosts: n, Root: root, Pierd: filepath.Join(bin, "pierd"),
		PierdArgs: []string{"--cluster-node-ttl", "1.5s"}}
	if len(external) > 0 && external[0] {
		nstest.Require(t, "etcd")
		o.External = true
	}
	l, err := Up(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

// sh runs argv in host (or "client") and returns its output.
func sh(t *testing.T, l *Lab, host string, argv ...string) (string, error) {
	t.Helper()
	cmd, err := l.Command(t.Context(), host, argv...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// pier runs the pier CLI against host's pierd.
func pier(t *testing.T, l *Lab, host string, args ...string) (string, error) {
	t.Helper()
	return sh(t, l, host, append([]string{filepath.Join(binDir, "pier")}, args...)...)
}

// ok fails the test when the command it is given failed, and returns its output.
func ok(t *testing.T) func(string, error) string {
	return func(out string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return out
	}
}

func TestLabCluster(t *testing.T) {
	l := up(t, 3)
	// The underlay: hosts reach each other and the client; nothing else is routed.
	for _, h := range []string{"client", "h2", "h3"} {
		ok(t)(sh(t, l, h, "ping", "-c1", "-W2", "192.0.2.1"))
	}
	// A network created on h1 with the real docker CLI is listed on h2 and h3.
	ok(t)(sh(t, l, "h1", "docker", "network", "create", "-d", "overlay", "--attachable", "ov"))
	for _, h := range []string{"h2", "h3"} {
		nstest.Eventually(t, "ov on "+h, 5*time.Second, func() bool {
			out, _ := sh(t, l, h, "docker", "network", "ls", "--filter", "name=ov", "--format", "{{.Name}} {{.Driver}} {{.Scope}}")
			return out == "ov overlay global"
		})
	}
	out := ok(t)(pier(t, l, "h3", "node", "ls", "--format", "{{.Name}} {{.State}} {{.Address}}"))
	if out != "h1 ready 192.0.2.1\nh2 ready 192.0.2.2\nh3 * ready 192.0.2.3" {
		t.Fatalf("node ls on h3:\n%s", out)
	}
	// Each node reports its kernel's cluster features (VXLAN must be there: the
	// overlay traffic below crosses it).
	for _, line := range strings.Split(ok(t)(pier(t, l, "h2", "node", "ls", "--format", "{{.Capabilities}}")), "\n") {
		if !strings.Contains(line, "vxlan=yes") || !strings.Contains(line, "wireguard=") {
			t.Fatalf("node capabilities %q", line)
		}
	}
	// The join token: printed by h1 (an etcd member), the same as its token file; a
	// client-only request elsewhere says where to ask.
	tok := ok(t)(pier(t, l, "h1", "cluster", "token"))
	if b, err := os.ReadFile(l.TokenFile()); err != nil || strings.TrimSpace(string(b)) != tok || !strings.HasPrefix(tok, "PIER1-") {
		t.Fatalf("pier cluster token = %q, token file %q (%v)", tok, b, err)
	}
	// Sandboxes on h1 and h2 talk by name across hosts.
	ok(t)(pier(t, l, "h1", "sandbox", "create", "--network", "ov", "--name", "web"))
	ok(t)(pier(t, l, "h2", "sandbox", "create", "--network", "ov", "--name", "cli"))
	ok(t)(pier(t, l, "h2", "exec", "cli", "--", "ping", "-c1", "-W5", "web"))

	// h2's pierd is killed: h1 sees h2 down within TTL + 1 s (etcd rounds the 1.5 s
	// TTL up to 2 s) and stops resolving its sandbox.
	if err := l.Kill("h2"); err != nil {
		t.Fatal(err)
	}
	took := nstest.Eventually(t, "h1 to see h2 down", 5*time.Second, func() bool {
		out, _ := pier(t, l, "h1", "node", "ls", "--format", "{{.Name}} {{.State}}")
		return strings.Contains(out, "h2 down")
	})
	t.Logf("h2 seen down %v after SIGKILL", took.Round(10*time.Millisecond))
	nstest.Eventually(t, "cli to stop resolving on h1", 3*time.Second, func() bool {
		_, err := pier(t, l, "h1", "exec", "web", "--", "nslookup", "cli")
		return err != nil
	})
	// With one of the three etcd members gone, the survivors keep working: a global
	// network created on h1 is usable from h3.
	ok(t)(sh(t, l, "h1", "docker", "network", "create", "-d", "overlay", "--attachable", "ov2"))
	nstest.Eventually(t, "ov2 on h3", 5*time.Second, func() bool {
		_, err := pier(t, l, "h3", "network", "inspect", "ov2")
		return err == nil
	})
	ok(t)(pier(t, l, "h3", "sandbox", "create", "--network", "ov2", "--name", "late"))
	// It comes back with its sandbox, which resolves and answers again.
	if err := l.Start(t.Context(), "h2"); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "h2 ready and cli reachable from h1", 10*time.Second, func() bool {
		_, err := pier(t, l, "h1", "exec", "web", "--", "ping", "-c1", "-W1", "cli")
		return err == nil
	})
	if out := ok(t)(pier(t, l, "h1", "node", "ls", "--format", "{{.Name}}")); out != "h1 *\nh2\nh3" {
		t.Fatalf("nodes after h2's restart (duplicates?):\n%s", out)
	}

	// Partition h3: h1 cannot reach it while h2 still can be reached; healed, it can.
	if err := l.Partition("h3"); err != nil {
		t.Fatal(err)
	}
	if out, err := sh(t, l, "h1", "ping", "-c1", "-W1", "192.0.2.3"); err == nil {
		t.Fatalf("h3 reachable while partitioned:\n%s", out)
	}
	ok(t)(sh(t, l, "h1", "ping", "-c1", "-W2", "192.0.2.2"))
	if err := l.Heal("h3"); err != nil {
		t.Fatal(err)
	}
	ok(t)(sh(t, l, "h1", "ping", "-c1", "-w5", "192.0.2.3")) // -w: retry until a reply (ARP after the link comes back)

	// A pierd with a bad cluster setting fails at start with a clear message and
	// writes nothing: a store on a closed port, a node name a live node holds.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cluster-store", "etcd://192.0.2.254:1", "--node-name", "h9"}, "cannot reach the cluster store"},
		{[]string{"--cluster-join", l.StoreURL(), "--cluster-token-file", l.TokenFile(), "--node-name", "h1"}, "h1"},
		{[]string{"--cluster-join", l.StoreURL(), "--cluster-token", "PIER1-AAAA-BBBB", "--node-name", "h9"}, "token"},
		{[]string{"--cluster-join", l.StoreURL(), "--cluster-token-file", l.TokenFile(), "--cluster-advertise", "198.51.100.7", "--node-name", "h9"}, "no interface of this host has that address"},
	} {
		data := filepath.Join(t.TempDir(), "data")
		args := append([]string{l.Pierd, "--data-root", data, "--exec-root", filepath.Join(t.TempDir(), "exec"),
			"-H", "unix://" + filepath.Join(t.TempDir(), "x.sock"), "--cluster-advertise", "192.0.2.3"}, tc.args...)
		out, err := sh(t, l, "h3", args...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("pierd %v: %v\n%s\nwant an error containing %q", tc.args, err, out, tc.want)
		}
		if _, err := os.Stat(filepath.Join(data, "pier.db")); err == nil {
			t.Errorf("pierd %v wrote its store despite failing", tc.args)
		}
	}

	// A second lab of the same name is refused.
	if _, err := Up(context.Background(), Options{Name: "t", Root: filepath.Dir(l.Dir), Pierd: l.Pierd}); !errdefs.Is(err, errdefs.KindConflict) {
		t.Fatalf("second lab with the same name: %v", err)
	}
}

func TestLabDownRemovesEverything(t *testing.T) {
	l := up(t, 2)
	ok(t)(pier(t, l, "h1", "sandbox", "create", "--name", "s1"))
	if err := l.Kill("h1"); err != nil { // a crashed host leaves its sandbox pinned
		t.Fatal(err)
	}
	pids := []int{l.EtcdPID, l.Hosts[1].PID}
	if err := l.Down(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("process %d still runs after down", pid)
		}
	}
	if _, err := os.Stat(l.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after down: %v", l.Dir, err)
	}
	b, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(b), l.Dir) {
		t.Errorf("mounts left under %s", l.Dir)
	}
}

// TestLabExternalStore runs the lab on an external etcd (Debian's etcd-server, in the
// lab namespace) instead of embedded members.
func TestLabExternalStore(t *testing.T) {
	l := up(t, 2, true)
	ok(t)(sh(t, l, "h1", "docker", "network", "create", "-d", "overlay", "--attachable", "ov"))
	nstest.Eventually(t, "ov on h2", 5*time.Second, func() bool {
		out, _ := sh(t, l, "h2", "docker", "network", "ls", "--filter", "name=ov", "--format", "{{.Scope}}")
		return out == "global"
	})
	ok(t)(pier(t, l, "h1", "sandbox", "create", "--network", "ov", "--name", "web"))
	ok(t)(pier(t, l, "h2", "sandbox", "create", "--network", "ov", "--name", "cli"))
	ok(t)(pier(t, l, "h2", "exec", "cli", "--", "ping", "-c1", "-W5", "web"))

	// The store goes away: local work goes on, global work fails fast with 503 naming
	// the store, existing sandboxes keep talking across hosts; when the store is back
	// everything converges without restarting any pierd.
	if err := l.StopStore(); err != nil {
		t.Fatal(err)
	}
	ok(t)(pier(t, l, "h1", "network", "create", "localnet"))
	ok(t)(pier(t, l, "h1", "sandbox", "create", "--network", "localnet", "--name", "loc"))
	ok(t)(pier(t, l, "h2", "exec", "cli", "--", "ping", "-c1", "-W5", "web"))
	start := time.Now()
	out, err := sh(t, l, "h1", "docker", "network", "create", "-d", "overlay", "--attachable", "ov3")
	if err == nil || !strings.Contains(out, "cluster store") {
		t.Fatalf("global create with the store down: %v\n%s", err, out)
	}
	t.Logf("first global create refused after %v: %s", time.Since(start).Round(time.Millisecond), out)
	// Once the node knows the store is gone (its keepalive failed), refusals are fast.
	start = time.Now()
	if out, err := sh(t, l, "h1", "docker", "network", "create", "-d", "overlay", "--attachable", "ov3"); err == nil || !strings.Contains(out, "cluster store") {
		t.Fatalf("second global create with the store down: %v\n%s", err, out)
	}
	t.Logf("next global create refused after %v", time.Since(start).Round(time.Millisecond))
	if err := l.StartStore(t.Context()); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "global create to work again", 20*time.Second, func() bool {
		_, err := sh(t, l, "h1", "docker", "network", "create", "-d", "overlay", "--attachable", "ov3")
		return err == nil
	})
	nstest.Eventually(t, "ov3 on h2", 10*time.Second, func() bool {
		_, err := pier(t, l, "h2", "network", "inspect", "ov3")
		return err == nil
	})
}

// TestLabConcurrentConnects: 50 sandboxes connecting at once on each of 3 hosts get
// 150 distinct addresses on one overlay.
func TestLabConcurrentConnects(t *testing.T) {
	l := up(t, 3)
	ok(t)(sh(t, l, "h1", "docker", "network", "create", "-d", "overlay", "--attachable", "--subnet", "10.128.0.0/22", "big"))
	var wg sync.WaitGroup
	var mu sync.Mutex
	addrs := map[string]string{}
	errs := 0
	for _, h := range l.Hosts {
		nstest.Eventually(t, "big on "+h.Name, 5*time.Second, func() bool {
			_, err := pier(t, l, h.Name, "network", "inspect", "big")
			return err == nil
		})
		c, err := client.New("unix://" + h.Socket)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 50 {
			wg.Go(func() {
				sb, err := c.SandboxCreate(t.Context(), types.SandboxCreateRequest{Name: fmt.Sprintf("%s-%d", h.Name, i),
					Networks: []types.SandboxNetwork{{Network: "big"}}})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs++
					t.Errorf("%s-%d: %v", h.Name, i, err)
					return
				}
				for _, ep := range sb.Endpoints {
					if ep.Network == "big" {
						if other, dup := addrs[ep.IPv4Address]; dup {
							t.Errorf("%s got %s, already %s's", sb.Name, ep.IPv4Address, other)
						}
						addrs[ep.IPv4Address] = sb.Name
					}
				}
			})
		}
	}
	wg.Wait()
	if len(addrs) != 150 || errs > 0 {
		t.Fatalf("%d distinct addresses, %d errors, from 3 x 50 concurrent connects", len(addrs), errs)
	}
}

func TestLabUpFailingHalfWayCleansUp(t *testing.T) {
	nstest.Require(t, "root", "nsenter")
	root := t.TempDir()
	// A pierd that cannot start: the lab must not stay half-built.
	_, err := Up(t.Context(), Options{Name: "bad", Hosts: 2, Root: root, Pierd: "/bin/false"})
	if err == nil || !strings.Contains(err.Error(), "did not come up") {
		t.Fatalf("up with a broken pierd: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "bad")); !os.IsNotExist(err) {
		t.Fatalf("half-built lab left behind: %v", err)
	}
	b, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(b), root) {
		t.Fatal("mounts left behind by a failed up")
	}
}

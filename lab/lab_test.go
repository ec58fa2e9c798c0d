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

// poll retries fn until it reports true, for up to d.
func poll(t *testing.T, what string, d time.Duration, fn func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !fn() {
		if time.Since(start) > d {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
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
		poll(t, "ov on "+h, 5*time.Second, func() bool {
			out, _ := sh(t, l, h, "docker", "network", "ls", "--filter", "name=ov", "--format", "{{.Name}} {{.Driver}} {{.Scope}}")
			return out == "ov overlay global"
		})
	}
	out := ok(t)(pier(t, l, "h3", "node", "ls", "--format", "{{.Name}} {{.State}} {{.Address}}"))
	if out != "h1 ready 192.0.2.1\nh2 ready 192.0.2.2\nh3 * ready 192.0.2.3" {
		t.Fatalf("node ls on h3:\n%s", out)
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
	took := poll(t, "h1 to see h2 down", 5*time.Second, func() bool {
		out, _ := pier(t, l, "h1", "node", "ls", "--format", "{{.Name}} {{.State}}")
		return strings.Contains(out, "h2 down")
	})
	t.Logf("h2 seen down %v after SIGKILL", took.Round(10*time.Millisecond))
	poll(t, "cli to stop resolving on h1", 3*time.Second, func() bool {
		_, err := pier(t, l, "h1", "exec", "web", "--", "nslookup", "cli")
		return err != nil
	})
	// It comes back with its sandbox, which resolves and answers again.
	if err := l.Start(t.Context(), "h2"); err != nil {
		t.Fatal(err)
	}
	poll(t, "h2 ready and cli reachable from h1", 10*time.Second, func() bool {
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
	poll(t, "ov on h2", 5*time.Second, func() bool {
		out, _ := sh(t, l, "h2", "docker", "network", "ls", "--filter", "name=ov", "--format", "{{.Scope}}")
		return out == "global"
	})
	ok(t)(pier(t, l, "h1", "sandbox", "create", "--network", "ov", "--name", "web"))
	ok(t)(pier(t, l, "h2", "sandbox", "create", "--network", "ov", "--name", "cli"))
	ok(t)(pier(t, l, "h2", "exec", "cli", "--", "ping", "-c1", "-W5", "web"))
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

package stack

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/nstest"
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

// crashSeed reproduces a run of the crash test: go test -run SIGKILL -args -crash.seed=N
// (or PIER_CRASH_SEED=N). The seed picks the kill delays; the churn itself is
// deterministic, so a seed replays the same kill points up to the machine's timing.
var crashSeed = flag.Uint64("crash.seed", 0, "seed of TestSIGKILLMidOperationRestoresAndLeaksNothing's kill delays (0: from PIER_CRASH_SEED or random)")

func crashRand(t *testing.T) *rand.Rand {
	t.Helper()
	seed := *crashSeed
	if v := os.Getenv("PIER_CRASH_SEED"); seed == 0 && v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("PIER_CRASH_SEED: %v", err)
		}
	}
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("crash seed %d (reproduce: PIER_CRASH_SEED=%d or -args -crash.seed=%d)", seed, seed, seed)
	return rand.New(rand.NewPCG(seed, 0))
}

func TestSIGKILLMidOperationRestoresAndLeaksNothing(t *testing.T) {
	t.Parallel()
	nstest.Require(t, "root", "nft", "nsenter")
	rng := crashRand(t)
	for round := range 3 {
		delay := time.Duration(5+rng.IntN(150)) * time.Millisecond
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			t.Logf("killing the churning controller %v after it is ready", delay)
			e := newEnv(t)
			if err := e.s.Close(); err != nil { // the child owns the data root now
				t.Fatal(err)
			}
			e.s = nil
			killChildMidway(t, e, delay)
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

// checkConsistent proves the kernel and IPAM match the records exactly after the
// restart: host links, pinned namespaces and each sandbox's interfaces, every element
// of pier's nft sets, and every pool and address.
func checkConsistent(t *testing.T, e *env) {
	t.Helper()
	ctx := t.Context()
	c := e.s.Controller
	want := []string{"lo"}
	for _, n := range c.Networks(ctx) {
		want = append(want, "br-"+n.ID[:12])
		eps, _ := c.Endpoints(ctx, n.ID)
		for _, ep := range eps {
			if ep.SandboxID != "" {
				want = append(want, "pv"+ep.ID[:12])
			}
		}
	}
	sort.Strings(want)
	if diff := cmp.Diff(want, e.hostLinks()); diff != "" {
		t.Errorf("host links after crash+restart (-records +kernel):\n%s", diff)
	}
	checkSandboxes(t, e)
	checkFirewall(t, e)
	checkIPAM(t, e)
}

func checkSandboxes(t *testing.T, e *env) {
	t.Helper()
	ctx := t.Context()
	c := e.s.Controller
	var wantPins []string
	for _, sb := range c.Sandboxes(ctx) {
		wantPins = append(wantPins, sb.Key)
		eps, _ := c.SandboxEndpoints(ctx, sb.ID)
		want := []string{"lo"}
		for _, ep := range eps {
			want = append(want, ep.IfName)
		}
		sort.Strings(want)
		if diff := cmp.Diff(want, links(t, sb.Key)); diff != "" {
			t.Errorf("links of sandbox %s (-records +kernel):\n%s", sb.Name, diff)
		}
	}
	pins, _ := filepath.Glob(filepath.Join(e.opts.ExecRoot, "netns", "*"))
	sort.Strings(wantPins)
	if diff := cmp.Diff(wantPins, pins, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("pinned namespaces (-sandbox records +pins):\n%s", diff)
	}
}

// checkFirewall compares every element of pier's nft sets with what the network
// records call for (the churn makes bridge networks with ICC and masquerading on, no
// internal ones, no published ports).
func checkFirewall(t *testing.T, e *env) {
	t.Helper()
	want := map[string][]string{}
	for _, n := range e.s.Controller.Networks(t.Context()) {
		for set, elems := range networkElements(n) {
			want[set] = append(want[set], elems...)
		}
	}
	for _, v := range want {
		sort.Strings(v)
	}
	out, err := run(e.hostPath, "nft", "list", "table", "inet", "pier")
	if err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	if diff := cmp.Diff(want, nftElements(out)); diff != "" {
		t.Errorf("nft set elements (-records +kernel):\n%s\n%s", diff, out)
	}
}

// networkElements are the nft set elements a bridge network with ICC and
// masquerading on owns.
func networkElements(n cnm.Network) map[string][]string {
	br, owner := fmt.Sprintf("%q", "br-"+n.ID[:12]), fmt.Sprintf(" comment %q", n.ID)
	out := map[string][]string{"bridges": {br + owner}, "intra": {br + " . " + br + owner}, "hairpin": {br + " . " + br + owner}}
	for _, p := range n.IPv4 {
		out["masq4"] = append(out["masq4"], p.Subnet.String()+owner)
	}
	for _, p := range n.IPv6 {
		out["masq6"] = append(out["masq6"], p.Subnet.String()+owner)
	}
	return out
}

// nftElements returns the elements of each non-empty set and map of an `nft list
// table` dump, sorted, one string per element as nft prints it.
func nftElements(dump string) map[string][]string {
	out := map[string][]string{}
	set, inElems := "", false
	for _, line := range strings.Split(dump, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && (f[0] == "set" || f[0] == "map"):
			set = f[1]
		case len(f) >= 2 && f[0] == "elements" && f[1] == "=":
			inElems = true
			if rest := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "elements = {")); rest != "" {
				out[set] = append(out[set], splitElems(rest)...)
			}
		case inElems && strings.TrimSpace(line) == "}":
			inElems = false
		case inElems:
			out[set] = append(out[set], splitElems(line)...)
		}
	}
	for _, v := range out {
		sort.Strings(v)
	}
	return out
}

func splitElems(line string) []string {
	var out []string
	for _, el := range strings.Split(strings.TrimSuffix(strings.TrimSpace(line), "}"), ",") {
		if el = strings.TrimSpace(el); el != "" {
			out = append(out, el)
		}
	}
	return out
}

// checkIPAM proves through the controller that IPAM holds exactly the recorded
// allocations: every recorded pool and address is taken (asking for it again is a
// Conflict), and every other address of the range the churn used is free.
func checkIPAM(t *testing.T, e *env) {
	t.Helper()
	ctx := t.Context()
	c := e.s.Controller
	for _, n := range c.Networks(ctx) {
		for _, p := range append(append([]cnm.Pool{}, n.IPv4...), n.IPv6...) {
			_, err := c.CreateNetwork(ctx, cnm.NetworkSpec{Name: "probe", EnableIPv6: p.Subnet.Addr().Is6(),
				IPAM: []cnm.PoolSpec{{Subnet: p.Subnet}}})
			if !errdefs.Is(err, errdefs.KindForbidden) {
				t.Errorf("pool %s of network %s is not allocated after the restart: %v", p.Subnet, n.Name, err)
				_ = c.DeleteNetwork(ctx, "probe")
			}
		}
		eps, _ := c.Endpoints(ctx, n.ID)
		taken := map[netip.Addr]bool{}
		for _, ep := range eps {
			taken[ep.Addr4.Addr()], taken[ep.Addr6.Addr()] = true, true
		}
		for _, p := range n.IPv4 {
			probeAddresses(t, e, n, p, taken)
		}
	}
}

// probeAddresses creates an endpoint with each address from the gateway's next to 16
// past the highest recorded one: a recorded address must be refused, any other
// granted (then released).
func probeAddresses(t *testing.T, e *env, n cnm.Network, p cnm.Pool, taken map[netip.Addr]bool) {
	t.Helper()
	ctx := t.Context()
	last := p.Gateway.Addr()
	for a := range taken {
		if p.Subnet.Contains(a) && last.Less(a) {
			last = a
		}
	}
	for range 16 {
		last = last.Next()
	}
	for a := p.Gateway.Addr().Next(); a.Less(last) && p.Subnet.Contains(a); a = a.Next() {
		ep, err := e.s.Controller.CreateEndpoint(ctx, n.ID, cnm.EndpointSpec{Name: "probe", Addr4: a})
		switch {
		case taken[a] && !errdefs.Is(err, errdefs.KindForbidden):
			t.Errorf("recorded address %s of %s is free in IPAM after the restart: %v", a, n.Name, err)
		case !taken[a] && err != nil:
			t.Errorf("address %s of %s, in no record, is not free: %v", a, n.Name, err)
		}
		if err == nil {
			if err := e.s.Controller.DeleteEndpoint(ctx, n.ID, ep.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// checkEmpty proves that deleting everything leaves nothing behind.
func checkEmpty(t *testing.T, e *env) {
	t.Helper()
	if got := e.hostLinks(); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("host links after deleting everything: %v, want only lo", got)
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
	checkFirewall(t, e) // exactly the elements of the new network: nothing of the old ones
}

package firewall

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/piernet/pier/internal/nstest"
	"github.com/vishvananda/netns"
)

// newKernelFirewall returns a Firewall programming a fresh namespace.
func newKernelFirewall(t *testing.T) (*Firewall, netns.NsHandle) {
	t.Helper()
	ns := nstest.New(t)
	fw, err := New(t.Context(), Options{NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw.Close() })
	return fw, ns
}

// nft runs the nft binary (installed for tests only) in ns.
func nft(t *testing.T, ns netns.NsHandle, args ...string) string {
	t.Helper()
	out, err := runNft(t, ns, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func runNft(t *testing.T, ns netns.NsHandle, args ...string) (string, error) {
	t.Helper()
	nstest.Require(t, "nft")
	path, err := exec.LookPath("nft")
	if err != nil {
		t.Fatal(err)
	}
	var out, stderr bytes.Buffer
	var runErr error
	// os/exec forks from the calling OS thread, which nstest.Do has locked
	// and switched into ns, so nft runs in ns.
	nstest.Do(t, ns, func() {
		cmd := exec.Command(path, args...)
		cmd.Stdout, cmd.Stderr = &out, &stderr
		runErr = cmd.Run()
	})
	if runErr != nil {
		return "", fmt.Errorf("nft %s: %v: %s", strings.Join(args, " "), runErr, stderr.String())
	}
	return out.String(), nil
}

// dump returns pier's table as nft lists it, normalized to Render's layout.
func dump(t *testing.T, ns netns.NsHandle) string {
	t.Helper()
	return normalizeNft(nft(t, ns, "list", "table", "inet", "pier"))
}

// dumpNow is dump, or "" if the table does not exist.
func dumpNow(t *testing.T, ns netns.NsHandle) string {
	t.Helper()
	out, err := runNft(t, ns, "list", "table", "inet", "pier")
	if err != nil {
		return ""
	}
	return normalizeNft(out)
}

var elementsRE = regexp.MustCompile(`(?s)elements = \{ (.*?) \}`)

// normalizeNft lists set elements one per line, sorted, as Render does; nft
// wraps them by line length.
func normalizeNft(s string) string {
	return elementsRE.ReplaceAllStringFunc(s, func(block string) string {
		inner := elementsRE.FindStringSubmatch(block)[1]
		var elems []string
		for _, e := range strings.Split(inner, ",") {
			elems = append(elems, "\t\t\t"+strings.TrimSpace(e)+",\n")
		}
		slices.Sort(elems)
		return "elements = {\n" + strings.Join(elems, "") + "\t\t}"
	})
}

func checkKernel(t *testing.T, ns netns.NsHandle, want State) {
	t.Helper()
	if diff := cmp.Diff(Render(want), dump(t, ns)); diff != "" {
		t.Fatalf("kernel differs from Render (-render +kernel):\n%s", diff)
	}
}

func TestKernelMatchesGoldenAndRender(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	fw, ns := newKernelFirewall(t)
	applyGolden(t, fw)
	got := dump(t, ns)
	checkGolden(t, "nft_ruleset.golden", got)
	checkKernel(t, ns, goldenState())

	t.Run("ReconcileRestoresDeletedTable", func(t *testing.T) {
		deleteTable(t, ns)
		if ok, err := fw.Installed(ctx); err != nil || ok {
			t.Fatalf("Installed = %v, %v; want false", ok, err)
		}
		if err := fw.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		if ok, err := fw.Installed(ctx); err != nil || !ok {
			t.Fatalf("Installed = %v, %v; want true", ok, err)
		}
		if diff := cmp.Diff(got, dump(t, ns)); diff != "" {
			t.Errorf("after Reconcile (-before +after):\n%s", diff)
		}
	})
	t.Run("NextChangeRestoresDeletedTable", func(t *testing.T) {
		deleteTable(t, ns)
		if err := fw.RemoveBridge(ctx, "pier0"); err != nil {
			t.Fatal(err)
		}
		checkKernel(t, ns, fw.State())
		if err := fw.SetBridge(ctx, goldenState().Bridges[2]); err != nil {
			t.Fatal(err)
		}
		checkKernel(t, ns, goldenState())
	})
	t.Run("RoundTripLeavesSkeleton", func(t *testing.T) {
		for _, b := range goldenState().Bridges {
			if err := fw.RemoveBridge(ctx, b.Name); err != nil {
				t.Fatal(err)
			}
		}
		for owner := range goldenState().Ports {
			if err := fw.RemovePorts(ctx, owner); err != nil {
				t.Fatal(err)
			}
		}
		skeleton := dump(t, ns)
		checkGolden(t, "nft_skeleton.golden", skeleton)
		checkKernel(t, ns, State{})
	})
}

// applyGolden programs goldenState into fw, bridges first.
func applyGolden(t *testing.T, fw *Firewall) {
	t.Helper()
	for _, b := range goldenState().Bridges {
		if err := fw.SetBridge(t.Context(), b); err != nil {
			t.Fatal(err)
		}
	}
	for owner, bs := range goldenState().Ports {
		if err := fw.SetPorts(t.Context(), owner, bs); err != nil {
			t.Fatal(err)
		}
	}
}

// deleteTable deletes pier's table behind the firewall's back.
func deleteTable(t *testing.T, ns netns.NsHandle) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	c.DelTable(newTable())
	if err := c.Flush(); err != nil {
		t.Fatalf("deleting table: %v", err)
	}
}

// TestKernelRandomOrder drives the real kernel through the test states with
// incremental batches in random order: overlapping, adjacent and duplicate
// intervals, comment changes, flag flips.
func TestKernelRandomOrder(t *testing.T) {
	t.Parallel()
	states := testStates()
	for seed := range uint64(4) {
		rng := rand.New(rand.NewPCG(seed, 1))
		fw, ns := newKernelFirewall(t)
		if err := fw.Reconcile(t.Context()); err != nil {
			t.Fatal(err)
		}
		for _, i := range rng.Perm(len(states)) {
			applyState(t, fw, states[i], rng)
			checkKernel(t, ns, states[i])
		}
	}
}

// TestKernelLeavesOtherTablesAlone proves pier touches only its own table,
// also tables named "pier" in other families.
func TestKernelLeavesOtherTablesAlone(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	fw, ns := newKernelFirewall(t)
	others := []string{"inet other", "ip pier", "bridge pier"}
	for _, o := range others {
		nft(t, ns, "add table "+o+" { chain c { type filter hook forward priority 0; policy accept; counter; }; }")
	}
	before := nft(t, ns, "list", "ruleset")
	if err := fw.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	for _, b := range goldenState().Bridges {
		if err := fw.SetBridge(ctx, b); err != nil {
			t.Fatal(err)
		}
		if err := fw.RemoveBridge(ctx, b.Name); err != nil {
			t.Fatal(err)
		}
	}
	deleteTable(t, ns)
	if err := fw.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	for _, o := range others {
		fam, name, _ := strings.Cut(o, " ")
		if !strings.Contains(before, "table "+o+" {") {
			t.Fatalf("setup: %s missing", o)
		}
		if got, want := nft(t, ns, "list", "table", fam, name), tableText(before, o); got != want {
			t.Errorf("table %s changed:\n%s\nwant:\n%s", o, got, want)
		}
	}
}

// tableText cuts one table's listing out of an `nft list ruleset` text.
func tableText(ruleset, table string) string {
	start := strings.Index(ruleset, "table "+table+" {")
	end := strings.Index(ruleset[start:], "\n}\n")
	return ruleset[start : start+end+3]
}

// TestKernelCurrentNamespaceIsPinned creates a Firewall with the zero
// Options on a thread inside ns and uses it from other threads.
func TestKernelCurrentNamespaceIsPinned(t *testing.T) {
	t.Parallel()
	ns := nstest.New(t)
	var fw *Firewall
	var err error
	nstest.Do(t, ns, func() { fw, err = New(t.Context(), Options{}) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fw.Close() })
	if !fw.ownsNS.Equal(ns) {
		t.Fatal("New did not pin the calling thread's namespace") // stop before touching any other namespace
	}
	if err := fw.SetBridge(t.Context(), goldenState().Bridges[2]); err != nil {
		t.Fatal(err)
	}
	checkKernel(t, ns, fw.State())
}

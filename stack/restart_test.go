package stack

import (
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/driver/bridge"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// snapshot is what a user sees of the stack: networks, endpoints and sandboxes.
type snapshot struct {
	Networks  []string
	Endpoints []string
	Sandboxes []string
}

func (e *env) snapshot() snapshot {
	e.t.Helper()
	ctx := e.t.Context()
	c := e.s.Controller
	var s snapshot
	for _, n := range c.Networks(ctx) {
		var pools []string
		for _, p := range append(n.IPv4, n.IPv6...) {
			pools = append(pools, p.Subnet.String()+" gw "+p.Gateway.String())
		}
		s.Networks = append(s.Networks, n.ID+" "+n.Name+" "+strings.Join(pools, ","))
		eps, err := c.Endpoints(ctx, n.ID)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, ep := range eps {
			s.Endpoints = append(s.Endpoints, strings.Join([]string{ep.ID, ep.Name, ep.Addr4.String(), ep.Addr6.String(), ep.MAC, ep.SandboxID, ep.IfName}, " "))
		}
	}
	for _, sb := range c.Sandboxes(ctx) {
		s.Sandboxes = append(s.Sandboxes, sb.ID+" "+sb.Name+" "+sb.Key+" gw="+sb.GatewayEndpoint)
	}
	sort.Strings(s.Endpoints)
	return s
}

// hostLinks lists link names in the test host namespace.
func (e *env) hostLinks() []string { return links(e.t, e.hostPath) }

func TestRestartRestoresAndRepairs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if err := e.s.Controller.EnsurePredefined(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	e.network(cnm.NetworkSpec{Name: "app", EnableIPv6: true})
	e.network(cnm.NetworkSpec{Name: "back"})
	a := e.sandbox("a", "app", "back")
	b := e.sandbox("b", "app")
	before, linksBefore := e.snapshot(), e.hostLinks()

	e.reopen()
	if diff := cmp.Diff(before, e.snapshot()); diff != "" {
		t.Fatalf("state after restart (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(linksBefore, e.hostLinks()); diff != "" {
		t.Fatalf("host links after restart (-before +after):\n%s", diff)
	}

	// Break the kernel state behind pier's back: delete a bridge, a veth and a namespace.
	host, err := netns.Open(e.hostPath)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	for _, name := range []string{"pier0", hostVeth(t, e, "a", "back")} {
		l, err := host.NL.LinkByName(name)
		if err != nil {
			t.Fatalf("finding %s: %v", name, err)
		}
		if err := host.NL.LinkDel(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := netns.Remove(b.Key); err != nil {
		t.Fatal(err)
	}
	e.reopen()
	if diff := cmp.Diff(before, e.snapshot()); diff != "" {
		t.Fatalf("state after repair (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(linksBefore, e.hostLinks()); diff != "" {
		t.Fatalf("host links after repair (-before +after):\n%s", diff)
	}
	listen(t, a.Key)
	if err := dialEcho(b.Key, e.addr("a", "app", false), 2*time.Second); err != nil {
		t.Fatalf("traffic after repair: %v", err)
	}
	if err := nstest.Ping(b.Key, e.addr("a", "app", true)); err != nil {
		t.Fatalf("IPv6 after repair: %v", err)
	}
}

// hostVeth returns the host-side veth name of sandbox sb's endpoint on network net.
func hostVeth(t *testing.T, e *env, sb, net string) string {
	t.Helper()
	ep, err := e.s.Controller.Endpoint(t.Context(), net, sb)
	if err != nil {
		t.Fatal(err)
	}
	return "pv" + ep.ID[:12]
}

// TestRestartRemovesHalfCreatedBridges: a pierd killed between creating a bridge and
// marking it with its network leaves an unmarked bridge; restore must remove it, and
// must leave alone bridges pier did not create, even with names like its own.
func TestRestartRemovesHalfCreatedBridges(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.network(cnm.NetworkSpec{Name: "app"})
	want := e.hostLinks()
	host, err := netns.Open(e.hostPath)
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	add := func(name string, group uint32, alias string) {
		attrs := netlink.NewLinkAttrs()
		attrs.Name, attrs.Group = name, group
		br := &netlink.Bridge{LinkAttrs: attrs}
		if err := host.NL.LinkAdd(br); err != nil {
			t.Fatal(err)
		}
		if alias != "" {
			if err := host.NL.LinkSetAlias(br, alias); err != nil {
				t.Fatal(err)
			}
		}
	}
	add("br-0123456789ab", bridge.OwnerGroup, "")                              // died before the alias
	add("br-aaaaaaaaaaaa", bridge.OwnerGroup, "pier:"+strings.Repeat("a", 64)) // network never recorded
	add("br-bbbbbbbbbbbb", 0, "")                                              // Docker's naming, not pier's
	add("userbr", 0, "")
	e.reopen()
	want = append(want, "br-bbbbbbbbbbbb", "userbr")
	sort.Strings(want)
	got := e.hostLinks()
	sort.Strings(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("host links after restart (-want +got):\n%s", diff)
	}
}

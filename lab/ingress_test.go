package lab

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// serveWho answers TCP and UDP on port in a task's namespace with the task's name and
// the peer address it saw ("t2 192.0.2.254:40000").
func serveWho(t *testing.T, ns *netns.Namespace, name string, port int) {
	t.Helper()
	netlab.Serve(t, ns, fmt.Sprintf(":%d", port), func(c net.Conn) {
		defer c.Close()
		fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
	})
	netlab.ServeUDP(t, ns, fmt.Sprintf(":%d", port), func(from net.Addr, _ []byte) []byte { return fmt.Appendf(nil, "%s %s\n", name, from) })
}

// who asks addr over network ("tcp4" or "udp4") from the lab's client namespace and
// returns the answering task and the client address it saw, checked against the
// client's own socket address.
func who(t *testing.T, client *netns.Namespace, network string, addr netip.AddrPort) (task string, err error) {
	t.Helper()
	c, err := netlab.Dial(t, client, network, addr.String(), 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if network == "udp4" {
		if _, err := c.Write([]byte("?")); err != nil {
			return "", err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	name, saw, _ := strings.Cut(strings.TrimSpace(line), " ")
	if saw != c.LocalAddr().String() {
		return name, fmt.Errorf("%s saw the client as %s, but the client is %s (the client's address was not kept)", name, saw, c.LocalAddr())
	}
	return name, nil
}

// webTasks makes tasks t2 and t3 of service web on h2 and h3, each answering on :80
// (serveWho), and returns the lab's client namespace.
func webTasks(t *testing.T, l *Lab) *netns.Namespace {
	t.Helper()
	for _, h := range []string{"h2", "h3"} {
		nstest.Eventually(t, "the service on "+h, 5*time.Second, func() bool { _, err := pier(t, l, h, "service", "inspect", "web"); return err == nil })
		task := "t" + h[1:]
		ok(t)(pier(t, l, h, "sandbox", "create", "--name", task, "--service", "web"))
		serveWho(t, sandboxNS(t, l, h, task), task, 80)
	}
	client, err := netns.Open(l.ClientNS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// TestLabIngressKeepsClientAddress: a service with tasks on h2 and h3 publishes 8080
// on the routing mesh. From the lab's client namespace (on the underlay, like a
// client outside the cluster), 8080 answers on each of the three hosts — h1 has no
// task — over TCP and UDP, and every task saw the client's real address and port.
// Host mode publishes 9090 on h2 and h3 only. A service removed stops being published.
func TestLabIngressKeepsClientAddress(t *testing.T) {
	l := up(t, 3)
	ok(t)(sh(t, l, "h1", "docker", "network", "create", "-d", "overlay", "ov"))
	ok(t)(pier(t, l, "h1", "service", "create", "web", "--network", "ov", "--port", "80/tcp", "--port", "80/udp",
		"--publish", "8080:80", "--publish", "8080:80/udp", "--publish", "mode=host,published=9090,target=80"))
	if out, err := pier(t, l, "h2", "service", "create", "other", "--network", "ov", "--publish", "8080:81"); err == nil ||
		!strings.Contains(out, "port '8080' is already in use by service 'web'") {
		t.Fatalf("a second service publishing ingress port 8080 on another host: %v\n%s", err, out)
	}
	client := webTasks(t, l)
	// Converged when h1 (no task) forwards to both tasks: each task enters rotation
	// once it listens, and h1 learns that through etcd.
	conv := map[string]bool{}
	nstest.Eventually(t, "both tasks behind h1's 8080", 15*time.Second, func() bool {
		if name, err := who(t, client, "tcp4", netip.AddrPortFrom(l.Hosts[0].Addr, 8080)); err == nil {
			conv[name] = true
		}
		return conv["t2"] && conv["t3"]
	})

	// Every host answers on 8080, TCP and UDP, and each task saw the client itself.
	for _, proto := range []string{"tcp4", "udp4"} {
		for _, h := range l.Hosts {
			to := netip.AddrPortFrom(h.Addr, 8080)
			seen := map[string]int{}
			nstest.Eventually(t, fmt.Sprintf("%s %s answering through the mesh", proto, to), 15*time.Second, func() bool {
				name, err := who(t, client, proto, to)
				if err == nil {
					seen[name]++
				}
				return err == nil
			})
			for range 40 {
				name, err := who(t, client, proto, to)
				if err != nil {
					t.Fatalf("%s to %s (%s): %v", proto, to, h.Name, err)
				}
				seen[name]++
			}
			// A host with a task prefers it; h1 has none and spreads over both.
			switch h.Name {
			case "h1":
				if seen["t2"] == 0 || seen["t3"] == 0 {
					t.Errorf("%s through h1 (no task) reached %v, want both tasks", proto, seen)
				}
			default:
				if local := "t" + h.Name[1:]; len(seen) != 1 || seen[local] == 0 {
					t.Errorf("%s through %s reached %v, want only its local task %s", proto, h.Name, seen, local)
				}
			}
			t.Logf("%s via %s:8080 → %v (client address kept)", proto, h.Name, seen)
		}
	}

	// Host mode: 9090 on the hosts with a task only, to their own task.
	for _, h := range l.Hosts {
		name, err := who(t, client, "tcp4", netip.AddrPortFrom(h.Addr, 9090))
		switch {
		case h.Name == "h1" && err == nil:
			t.Errorf("host-mode port 9090 answered on h1, which has no task (%s)", name)
		case h.Name == "h1" && !errors.Is(err, syscall.ECONNREFUSED):
			t.Errorf("host-mode port 9090 on h1: %v, want connection refused", err)
		case h.Name != "h1" && (err != nil || name != "t"+h.Name[1:]):
			// Host mode goes through the task's gateway bridge, which masquerades nothing
			// inbound either: who checks the client address here too.
			t.Errorf("host-mode port 9090 on %s: %q, %v; want its task", h.Name, name, err)
		}
	}

	// Removed: the tasks first, then the service; 8080 is then closed everywhere.
	for _, h := range []string{"h2", "h3"} {
		ok(t)(pier(t, l, h, "sandbox", "rm", "-f", "t"+h[1:]))
	}
	ok(t)(pier(t, l, "h1", "service", "rm", "web"))
	for _, h := range l.Hosts {
		to := netip.AddrPortFrom(h.Addr, 8080)
		nstest.Eventually(t, "8080 closed on "+h.Name, 5*time.Second, func() bool {
			_, err := who(t, client, "tcp4", to)
			return errors.Is(err, syscall.ECONNREFUSED)
		})
	}
}

// TestLabIngressFollowsHosts: the mesh follows the cluster. 1,000 connections
// through a host with no task spread over the two tasks; a host whose pierd starts
// after the service was created publishes too; `nft flush ruleset` on a host and a
// restart of its pierd heal; and when a task's host is cut off the underlay, the mesh
// stops choosing its task within the node TTL + 1 s.
func TestLabIngressFollowsHosts(t *testing.T) {
	l := up(t, 4) // four etcd members: one stopped or cut off keeps the quorum
	if err := l.Stop("h4"); err != nil {
		t.Fatal(err)
	}
	ok(t)(sh(t, l, "h1", "docker", "network", "create", "-d", "overlay", "ov"))
	ok(t)(pier(t, l, "h1", "service", "create", "web", "--network", "ov", "--port", "80/tcp", "--publish", "8080:80"))
	client := webTasks(t, l)
	via := func(h string) netip.AddrPort {
		host, err := l.Host(h)
		if err != nil {
			t.Fatal(err)
		}
		return netip.AddrPortFrom(host.Addr, 8080)
	}
	converge := func(what, h string, want ...string) {
		t.Helper()
		seen := map[string]bool{}
		nstest.Eventually(t, what, 20*time.Second, func() bool {
			if name, err := who(t, client, "tcp4", via(h)); err == nil {
				seen[name] = true
			}
			for _, w := range want {
				if !seen[w] {
					return false
				}
			}
			return true
		})
	}
	converge("both tasks behind h1", "h1", "t2", "t3")

	// Spread: 64 slots, 32 per task: p = 1/2 per connection, sd ≈ 16 over 1,000;
	// 400 is more than 6 sd below the mean.
	counts := map[string]int{}
	for range 1000 {
		name, err := who(t, client, "tcp4", via("h1"))
		if err != nil {
			t.Fatalf("through h1: %v", err)
		}
		counts[name]++
	}
	t.Logf("1,000 connections through h1 (no task): %v", counts)
	if counts["t2"] < 400 || counts["t3"] < 400 {
		t.Errorf("spread %v: each task should get 500 ± 100", counts)
	}

	// A host that joins after the service was created publishes it too.
	if err := l.Start(t.Context(), "h4"); err != nil {
		t.Fatal(err)
	}
	converge("h4 (started later) publishing 8080", "h4", "t2", "t3")

	// `nft flush ruleset` on h1: the firewall's healer restores the mesh's tables.
	ok(t)(sh(t, l, "h1", "nft", "flush", "ruleset"))
	converge("h1's 8080 after nft flush ruleset", "h1", "t2", "t3")
	if out := ok(t)(sh(t, l, "h1", "nft", "list", "tables")); !strings.Contains(out, "pier_ingress") {
		t.Errorf("h1's tables after the heal:\n%s", out)
	}

	// A restart of h1's pierd.
	if err := l.Stop("h1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(t.Context(), "h1"); err != nil {
		t.Fatal(err)
	}
	converge("h1's 8080 after a pierd restart", "h1", "t2", "t3")

	// h3 dies (cut off the underlay): after the lease (1.5 s, granted as 2 s) + 1 s,
	// h1 sends everything to t2.
	if err := l.Partition("h3"); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	time.Sleep(3 * time.Second)
	for i := range 50 {
		name, err := who(t, client, "tcp4", via("h1"))
		if err != nil || name != "t2" {
			t.Fatalf("request %d, %v after h3's death: %q, %v (want t2)", i, time.Since(cut).Round(time.Millisecond), name, err)
		}
	}
}

package stack

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/lb"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/portmap"
)

// serveWho answers TCP and UDP on :80 in a task with its name and the peer it saw.
func serveWho(t *testing.T, sb cnm.Sandbox) {
	t.Helper()
	ns, err := netns.Open(sb.Key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	netlab.Serve(t, ns, ":80", func(c net.Conn) {
		defer c.Close()
		fmt.Fprintf(c, "%s %s\n", sb.Name, c.RemoteAddr())
	})
	netlab.ServeUDP(t, ns, ":80", func(from net.Addr, _ []byte) []byte { return fmt.Appendf(nil, "%s %s\n", sb.Name, from) })
}

// askWho connects from ns to addr and returns the answering task and the client
// address it saw.
func askWho(t *testing.T, ns *netns.Namespace, network string, addr netip.AddrPort) (task, saw, local string, err error) {
	t.Helper()
	c, err := netlab.Dial(t, ns, network, addr.String(), 2*time.Second)
	if err != nil {
		return "", "", "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if network == "udp4" {
		if _, err := c.Write([]byte("?")); err != nil {
			return "", "", "", err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", "", "", err
	}
	task, saw, _ = strings.Cut(strings.TrimSpace(line), " ")
	return task, saw, c.LocalAddr().String(), nil
}

// A service with tasks on hosts 2 and 3 publishes 8080 (TCP and UDP) on the routing
// mesh: a client on the hosts' LAN reaches it through every host's address, host 1
// (no task) included; each task sees the client's own address and port; a host with a
// task keeps its connections local. With --ingress-snat the task sees the forwarding
// host instead. Removing the service closes the port everywhere.
func TestIngressMeshAcrossClusterHosts(t *testing.T) {
	l := newClusterLab(t, 3)
	hosts := l.hosts
	ctx := t.Context()
	out, err := netns.Open(l.outsider(t))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	hosts[0].network(cnm.NetworkSpec{Name: "ov", Driver: "overlay"})
	publish := []cnm.PublishPort{{Mode: cnm.PublishIngress, Proto: "tcp", Published: 8080, Target: 80},
		{Mode: cnm.PublishIngress, Proto: "udp", Published: 8080, Target: 80}}
	hosts[0].service(cnm.ServiceSpec{Name: "web", Networks: []string{"ov"}, Ports: []lb.Port{{Proto: "tcp", Port: 80}, {Proto: "udp", Port: 80}},
		Publish: publish})
	if _, err := hosts[1].s.Controller.CreateService(ctx, cnm.ServiceSpec{Name: "other", Networks: []string{"ov"},
		Publish: []cnm.PublishPort{{Mode: cnm.PublishIngress, Proto: "tcp", Published: 8080, Target: 81}}}); err == nil ||
		!strings.Contains(err.Error(), "port '8080' is already in use by service 'web'") {
		t.Fatalf("a second service publishing 8080 from another host: %v", err)
	}
	for i, name := range []string{"", "t2", "t3"} {
		if name == "" {
			continue
		}
		h := hosts[i]
		nstest.Eventually(t, "the service on "+name, 10*time.Second, func() bool { _, err := h.s.Controller.Service(ctx, "web"); return err == nil })
		sb, err := h.s.Controller.CreateSandbox(ctx, cnm.SandboxSpec{Name: name, Service: "web"})
		if err != nil {
			t.Fatal(err)
		}
		serveWho(t, sb)
	}

	// Converged when host 1 (no task) forwards to both tasks.
	conv := map[string]int{}
	nstest.Eventually(t, "both tasks behind host 1's 8080", 10*time.Second, func() bool {
		if task, _, _, err := askWho(t, out, "tcp4", netip.MustParseAddrPort("192.0.2.1:8080")); err == nil {
			conv[task]++
		}
		return conv["t2"] > 0 && conv["t3"] > 0
	})
	spread := func(proto string, snat bool) {
		t.Helper()
		for i := range hosts {
			to := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), 8080)
			nstest.Eventually(t, fmt.Sprintf("%s %v through the mesh", proto, to), 10*time.Second, func() bool {
				_, _, _, err := askWho(t, out, proto, to)
				return err == nil
			})
			seen := map[string]int{}
			for range 40 {
				task, saw, local, err := askWho(t, out, proto, to)
				if err != nil {
					t.Fatalf("%s to %v: %v", proto, to, err)
				}
				seen[task]++
				sawAddr, _ := netip.ParseAddrPort(saw)
				switch {
				case !snat && saw != local:
					t.Fatalf("%s via %v: %s saw the client as %s, but the client is %s", proto, to, task, saw, local)
				case snat && sawAddr.Addr().String() == "192.0.2.254":
					t.Fatalf("%s via %v with --ingress-snat: %s saw the client itself (%s)", proto, to, task, saw)
				}
			}
			if i == 0 && (seen["t2"] == 0 || seen["t3"] == 0) {
				t.Errorf("%s via host 1 (no task): %v, want both tasks", proto, seen)
			}
			if local := fmt.Sprintf("t%d", i+1); i > 0 && (len(seen) != 1 || seen[local] == 0) {
				t.Errorf("%s via host %d: %v, want only its own task %s", proto, i+1, seen, local)
			}
			t.Logf("%s via %v (snat %v): %v", proto, to, snat, seen)
		}
	}
	spread("tcp4", false)
	spread("udp4", false)

	// From a node itself, 127.0.0.1:8080 works too (the loopback proxy: the kernel
	// does not DNAT loopback to another host).
	for i, h := range hosts {
		host, err := netns.Open(h.hostPath)
		if err != nil {
			t.Fatal(err)
		}
		task, _, _, err := askWho(t, host, "tcp4", netip.MustParseAddrPort("127.0.0.1:8080"))
		host.Close()
		if err != nil || (i > 0 && task != fmt.Sprintf("t%d", i+1)) || (i == 0 && task != "t2" && task != "t3") {
			t.Errorf("127.0.0.1:8080 on host %d: %q, %v", i+1, task, err)
		}
	}

	snat := true
	if _, err := hosts[2].s.Controller.UpdateService(ctx, "web", cnm.ServiceUpdate{IngressSNAT: &snat}); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "--ingress-snat everywhere", 10*time.Second, func() bool {
		for _, h := range hosts {
			if s, err := h.s.Controller.Service(ctx, "web"); err != nil || !s.IngressSNAT {
				return false
			}
		}
		return true
	})
	spread("tcp4", true)

	for i, name := range []string{"t2", "t3"} {
		if err := hosts[i+1].s.Controller.DeleteSandbox(ctx, name, true); err != nil {
			t.Fatal(err)
		}
	}
	nstest.Eventually(t, "host 1 to see no task", 10*time.Second, func() bool {
		s, _ := hosts[0].s.Controller.Service(ctx, "web")
		return len(hosts[0].s.Controller.RemoteTasks(ctx, s)) == 0
	})
	if err := hosts[0].s.Controller.DeleteService(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	for i := range hosts {
		to := netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), 8080)
		nstest.Eventually(t, fmt.Sprintf("8080 closed on host %d", i+1), 10*time.Second, func() bool {
			_, _, _, err := askWho(t, out, "tcp4", to)
			return errors.Is(err, syscall.ECONNREFUSED)
		})
	}
}

// Host mode on a single host: a task publishes the port itself (reachable on the
// host's address), a second task of the same service on the same host is refused —
// the port is this host's — and after the first task is gone the port is free again.
func TestServiceHostModePublishing(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	app := e.network(cnm.NetworkSpec{Name: "app"})
	// The host's own address on app (a non-loopback address of the host: DNATed by the
	// kernel, so the task sees the caller's address).
	hostPort := netip.AddrPortFrom(app.IPv4[0].Gateway.Addr(), 9090)
	e.service(cnm.ServiceSpec{Name: "web", Networks: []string{"app"}, Ports: []lb.Port{{Proto: "tcp", Port: 80}},
		Publish: []cnm.PublishPort{{Mode: cnm.PublishHost, Proto: "tcp", Published: 9090, Target: 80}}})
	t1 := e.task(t, "t1", "web")
	if len(t1.Published) == 0 || slices.ContainsFunc(t1.Published, func(b portmap.Binding) bool { return b.HostPort != 9090 }) {
		t.Fatalf("the task's published ports: %+v", t1.Published)
	}
	if name, err := askName(e.hostPath, hostPort); err != nil || name != "t1" {
		t.Fatalf("host-mode port 9090: %q, %v", name, err)
	}
	if _, err := e.s.Controller.CreateSandbox(ctx, cnm.SandboxSpec{Name: "t2", Service: "web"}); err == nil || !strings.Contains(err.Error(), "9090") {
		t.Fatalf("a second task publishing 9090 on the same host: %v", err)
	}
	if err := e.s.Controller.DeleteSandbox(ctx, "t1", true); err != nil {
		t.Fatal(err)
	}
	e.task(t, "t3", "web")
	if name, err := askName(e.hostPath, hostPort); err != nil || name != "t3" {
		t.Fatalf("host-mode port 9090 after the first task left: %q, %v", name, err)
	}
}

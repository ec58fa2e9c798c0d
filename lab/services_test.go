package lab

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
)

// TestLabServiceSurvivesTaskHostDeath: a service on an overlay with tasks on h2 and
// h3 and a client on h1 under load; h2 is cut off the underlay (dead to the others).
// Only requests in flight to h2 at the cut or sent to it before its lease runs out may
// fail; every request that starts later than the lease (TTL rounded up to whole
// seconds, as etcd grants it) + 1 s succeeds, on h3.
func TestLabServiceSurvivesTaskHostDeath(t *testing.T) {
	l := up(t, 3) // three etcd members: h2's loss keeps the store's quorum; node TTL 1.5 s
	ok(t)(sh(t, l, "h1", "docker", "network", "create", "-d", "overlay", "--attachable", "ov"))
	ok(t)(pier(t, l, "h1", "service", "create", "web", "--network", "ov", "--port", "80/tcp"))
	for _, h := range []string{"h2", "h3"} {
		nstest.Eventually(t, "the service on "+h, 5*time.Second, func() bool { _, err := pier(t, l, h, "service", "inspect", "web"); return err == nil })
		task := "t" + h[1:]
		ok(t)(pier(t, l, h, "sandbox", "create", "--name", task, "--service", "web"))
		netlab.Serve(t, sandboxNS(t, l, h, task), ":80", func(c net.Conn) { defer c.Close(); fmt.Fprintln(c, task) })
	}
	ok(t)(pier(t, l, "h1", "sandbox", "create", "--name", "client", "--network", "ov"))
	client := sandboxNS(t, l, "h1", "client")
	vip, err := netip.ParsePrefix(ok(t)(pier(t, l, "h1", "service", "inspect", "web", "-f", "{{range .VirtualIPs}}{{.Addr}}{{end}}")))
	if err != nil {
		t.Fatal(err)
	}
	to := netip.AddrPortFrom(vip.Addr(), 80).String()
	// Per request: long enough for two SYN retransmissions (Linux resends after 1 s and
	// 3 s), so SYNs dropped by a machine under load (CI runs packages side by side) are
	// not taken for a dead task; a request sent to the dead task fails however long it
	// waits.
	const timeout = 3500 * time.Millisecond
	ask := func() (string, error) {
		c, err := netlab.Dial(t, client, "tcp4", to, timeout)
		if err != nil {
			return "", err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	seen := map[string]bool{}
	nstest.Eventually(t, "both tasks behind the VIP on h1", 10*time.Second, func() bool {
		if name, err := ask(); err == nil {
			seen[name] = true
		}
		return seen["t2"] && seen["t3"]
	})

	type result struct {
		at   time.Time
		name string
		err  error
	}
	var mu sync.Mutex
	var results []result
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				at := time.Now()
				name, err := ask()
				mu.Lock()
				results = append(results, result{at, name, err})
				mu.Unlock()
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
	time.Sleep(timeout + time.Second) // load before the death, to compare with
	cut := time.Now()
	if err := l.Partition("h2"); err != nil {
		t.Fatal(err)
	}
	const bound = 2*time.Second + time.Second // the lease (1.5 s, granted as 2 s) + 1 s
	time.Sleep(bound + 2*time.Second)
	close(stop)
	wg.Wait()

	var before, window, after, failedWindow int
	var lastFail time.Duration
	for _, r := range results {
		switch {
		case r.at.Before(cut.Add(-timeout)): // not in flight at the cut
			before++
			if r.err != nil {
				t.Errorf("a request before h2's death failed: %v", r.err)
			}
		case r.at.Sub(cut) < bound: // in flight at the cut, or started before the lease ran out
			window++
			if r.err != nil {
				failedWindow++
				lastFail = max(lastFail, r.at.Sub(cut))
			}
		default:
			after++
			if r.err != nil || r.name != "t3" {
				t.Errorf("a request %v after h2's death: %q, %v (want t3)", r.at.Sub(cut).Round(time.Millisecond), r.name, r.err)
			}
		}
	}
	t.Logf("requests: %d before h2's death, %d in flight at it or in the first %v after it (%d failed, the last starting %v after), %d later (all must succeed)",
		before, window, bound, failedWindow, lastFail.Round(time.Millisecond), after)
	if before == 0 || after < 20 {
		t.Fatalf("too little load to prove anything: %d before, %d after", before, after)
	}
}

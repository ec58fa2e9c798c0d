package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// system indexes: pier, Docker, raw.
const (
	sysPier = iota
	sysDocker
	sysRaw
)

var sysNames = [3]string{"pier overlay", "Docker overlay", "raw VXLAN"}

// pairs are the cross-host client/server namespaces: pier h1 → h3, Docker d1 → d3,
// raw b → a. Built once, by the first scenario that needs them.
type pairs struct {
	p    [3]endpointPair
	err  [3]error
	pier [2]box // client (h1), server (h3)
	dock [2]box
}

func (c *cluster) pairs(ctx context.Context) *pairs {
	if c.pr != nil {
		return c.pr
	}
	pr := &pairs{}
	c.pr = pr
	cli, err := c.pier.startBox(ctx, 0, "bc-cli")
	if err == nil {
		var srv box
		srv, err = c.pier.startBox(ctx, 2, "bc-srv")
		pr.pier = [2]box{cli, srv}
		pr.p[sysPier] = endpointPair{name: "pier", serverNS: srv.NetNS, client: cli.NetNS, serverIP: srv.IPs[clusterNet]}
	}
	pr.err[sysPier] = err
	if c.docker == nil {
		pr.err[sysDocker] = errors.New("the Docker swarm did not start (see Problems)")
	} else {
		cli, err := c.docker.startBox(ctx, 0, "bc-cli")
		if err == nil {
			var srv box
			srv, err = c.docker.startBox(ctx, 2, "bc-srv")
			pr.dock = [2]box{cli, srv}
			pr.p[sysDocker] = endpointPair{name: "docker", serverNS: srv.NetNS, client: cli.NetNS, serverIP: srv.IPs[clusterNet]}
		}
		pr.err[sysDocker] = err
	}
	if c.raw == nil {
		pr.err[sysRaw] = errors.New("the raw VXLAN pair could not be built (see Problems)")
	} else {
		pr.p[sysRaw] = endpointPair{name: "raw", serverNS: c.raw.a, client: c.raw.b, serverIP: c.raw.serverIP}
	}
	return pr
}

// scenThroughput: iperf3 between the pair of every system, 1 and 4 streams.
func (c *cluster) scenThroughput(ctx context.Context) *csection {
	pr := c.pairs(ctx)
	secs := int(c.cfg.Tput.Seconds())
	sec := &csection{Title: "Cross-host TCP throughput", Unit: "Gbit/s",
		Intro: fmt.Sprintf("`iperf3 -c SERVER -t %d [-P 4]` in a box on host 1 against `iperf3 -s` in a box on host 3 (pier h1→h3, Docker d1→d3; raw: one namespace to the other over the VXLAN pair). %d runs per system and stream count, the three systems rotating. Goal (issue 17): pier overlay ≥ 0.95 × raw VXLAN.", secs, c.cfg.NTput)}
	errs := c.iperfServers(pr.p[:], pr.err[:], "")
	for _, streams := range []int{1, 4} {
		samples, serr := c.iperfRounds(ctx, pr.p[:], errs, secs, streams)
		c.logf("throughput, %d stream(s): pier %.2f, Docker %.2f, raw %.2f Gbit/s", streams, median(samples[0]), median(samples[1]), median(samples[2]))
		scen := fmt.Sprintf("%d stream(s)", streams)
		for k := range 3 {
			r := crow{Scenario: scen, System: sysNames[k], Samples: samples[k], Err: serr[k]}
			if k != sysRaw {
				r.Ratio = ratioTo(samples[k], samples[sysRaw])
				if r.Ratio != "" {
					r.Ratio += " of raw"
				}
			}
			if k == sysPier {
				r.Goal = "≥ 0.95 of raw: " + verdictOf(len(samples[k]) > 0 && len(samples[sysRaw]) > 0, median(samples[k]) >= 0.95*median(samples[sysRaw]))
			}
			sec.Rows = append(sec.Rows, r)
		}
	}
	sec.Notes = append(sec.Notes, "The raw pair's underlay is one veth; pier's and Docker's hosts reach each other through a bridge in their lab namespace (veth → bridge → veth), one hop more per packet in both directions, so raw is an upper bound slightly above what a VXLAN overlay over the lab underlay can reach.")
	sec.Notes = append(sec.Notes, fmt.Sprintf("MTU: pier's overlay interface %d; the raw VXLAN devices were set to the same; Docker's overlay uses its default (1450 on a 1500 underlay).", c.pier.mtu))
	return sec
}

func verdictOf(measured, met bool) string {
	switch {
	case !measured:
		return "not measured"
	case met:
		return "met"
	}
	return "**missed**"
}

// iperfRun runs one iperf3 client and returns the received bits per second.
func iperfRun(ctx context.Context, p endpointPair, secs, streams int) (float64, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := inNetns(ctx, p.client, "iperf3", "-c", p.serverIP, "--connect-timeout", "3000", "-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams), "-J").Output()
		var res struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
			Error string `json:"error"`
		}
		_ = json.Unmarshal(out, &res)
		if err == nil && res.Error == "" && res.End.SumReceived.BitsPerSecond > 0 {
			return res.End.SumReceived.BitsPerSecond, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return 0, fmt.Errorf("iperf3 %s: %v %s", p.name, err, res.Error)
		}
		time.Sleep(100 * time.Millisecond) // the server is not listening yet
	}
}

// scenLatency: a TCP echo, one request in flight (TCP_RR).
func (c *cluster) scenLatency(ctx context.Context) *csection {
	pr := c.pairs(ctx)
	const rounds = 3
	n := c.cfg.NEcho / rounds
	sec := &csection{Title: "Cross-host request/response latency", Unit: "ms",
		Intro: fmt.Sprintf("`pierbench probe echo-client`: 64-byte requests on one TCP connection, each sent after the previous reply (TCP_RR), from the box on host 1 to an echo server in the box on host 3; %d rounds of %d round trips (after 100 unrecorded) per system, rotating.", rounds, n)}
	errs := pr.err
	for k := range 3 {
		if errs[k] != nil {
			continue
		}
		p := pr.p[k]
		_, errs[k] = c.startHelper(startProc("echo-"+p.name, filepath.Join(c.cfg.WorkDir, "echo-"+p.name+".log"),
			"nsenter", "--net="+p.serverNS, "--", c.cfg.Self, "probe", "echo-server", "-addr", p.serverIP+":7007"))
	}
	var samples [3][]float64
	for i := range rounds {
		for j := range 3 {
			k := (i + j) % 3
			if errs[k] != nil || ctx.Err() != nil {
				continue
			}
			out, err := inNetns(ctx, pr.p[k].client, c.cfg.Self, "probe", "echo-client", "-addr", pr.p[k].serverIP+":7007", "-n", strconv.Itoa(n)).Output()
			var rtts []float64
			if err == nil {
				err = json.Unmarshal(out, &rtts)
			}
			if err != nil {
				errs[k] = fmt.Errorf("echo client: %w", err)
				continue
			}
			samples[k] = append(samples[k], rtts...)
		}
	}
	for k := range 3 {
		r := crow{Scenario: "round trip", System: sysNames[k], Samples: samples[k], Err: errs[k]}
		if k != sysRaw {
			r.Ratio = ratioTo(samples[k], samples[sysRaw])
			if r.Ratio != "" {
				r.Ratio += " of raw"
			}
		}
		sec.Rows = append(sec.Rows, r)
	}
	c.logf("latency: pier %.3f, Docker %.3f, raw %.3f ms", median(samples[0]), median(samples[1]), median(samples[2]))
	return sec
}

// attacher creates a box on host 1 and removes it; both systems have one.
type attacher struct {
	start  func(ctx context.Context, h int, name string) (box, error)
	remove func(ctx context.Context, h int, b box) error
	obs    box // the observer on host 3
}

// scenConvergence: a box created on host 1; a probe in a box on host 3 polls its
// name (embedded DNS) and, once told the address, TCP to it.
func (c *cluster) scenConvergence(ctx context.Context) *csection {
	pr := c.pairs(ctx)
	sec := &csection{Title: "Convergence: a box on host 1, seen from host 3", Unit: "ms",
		Intro: fmt.Sprintf("Each try creates a box attached to the overlay on host 1 (pier: `POST /pier/v1/sandboxes`; Docker: container create + start through the SDK) while `pierbench probe appear` in the box on host 3 queries the name at 127.0.0.11 every ~0.5 ms and, from the moment the call returns and the address is known, opens TCP to it (a reset counts: the packet got there and back). Times are after the call returned; \"from start\" adds the call. %d tries per system after one untimed, alternating; the box is removed after each. Goal (issue 17): p50 ≤ 10 ms, p99 ≤ 30 ms.", c.cfg.NConv)}
	sys := [2]*attacher{}
	var errs [2]error
	if errs[0] = pr.err[sysPier]; errs[0] == nil {
		sys[0] = &attacher{start: c.pier.startBox, remove: c.pier.removeBox, obs: pr.pier[1]}
	}
	if errs[1] = pr.err[sysDocker]; errs[1] == nil {
		sys[1] = &attacher{start: c.docker.startBox, remove: c.docker.removeBox, obs: pr.dock[1]}
	}
	var call, dns, tcp, tcpAll [2][]float64
	for i := -1; i < c.cfg.NConv; i++ {
		order := []int{0, 1}
		if i%2 != 0 {
			order = []int{1, 0}
		}
		for _, k := range order {
			if errs[k] != nil || ctx.Err() != nil {
				continue
			}
			name := fmt.Sprintf("cv%d-%d", k, i+1)
			took, d, t, err := c.convergeOnce(ctx, sys[k], name)
			if err != nil {
				errs[k] = err
				continue
			}
			if i >= 0 {
				call[k] = append(call[k], ms(took))
				dns[k] = append(dns[k], ms(d))
				tcp[k] = append(tcp[k], ms(t))
				tcpAll[k] = append(tcpAll[k], ms(took+t))
			}
		}
	}
	names := [2]string{"pier", "Docker"}
	// pier/Docker, on pier's rows only, and only where both medians are positive.
	vsDocker := func(k int, xs [2][]float64) string {
		if k != 0 || !(median(xs[0]) > 0 && median(xs[1]) > 0) {
			return ""
		}
		return ratioTo(xs[0], xs[1]) + " of Docker"
	}
	for k := range 2 {
		goal := func(xs []float64) string {
			if len(xs) == 0 {
				return "p50 ≤ 10, p99 ≤ 30: not measured"
			}
			s := slices.Sorted(slices.Values(xs))
			return fmt.Sprintf("p50 ≤ 10, p99 ≤ 30: %s", verdictOf(true, median(s) <= 10 && pct(s, 99) <= 30))
		}
		sec.Rows = append(sec.Rows,
			crow{Scenario: "attach call on host 1", System: names[k], Samples: call[k], Err: errs[k], Ratio: vsDocker(k, call)},
			crow{Scenario: "name resolves on host 3, after the call", System: names[k], Samples: dns[k], Goal: goal(dns[k]), Ratio: vsDocker(k, dns)},
			crow{Scenario: "address answers TCP from host 3, after the call", System: names[k], Samples: tcp[k], Goal: goal(tcp[k]), Ratio: vsDocker(k, tcp)},
			crow{Scenario: "address answers TCP from host 3, from the call's start", System: names[k], Samples: tcpAll[k], Ratio: vsDocker(k, tcpAll)},
		)
	}
	sec.Notes = append(sec.Notes, "A negative time means the name resolved before the call had returned (Docker registers the name while the container starts, before `start` returns).")
	c.logf("convergence: dns pier %.1f, Docker %.1f ms; tcp pier %.1f, Docker %.1f ms", median(dns[0]), median(dns[1]), median(tcp[0]), median(tcp[1]))
	return sec
}

func (c *cluster) convergeOnce(ctx context.Context, a *attacher, name string) (took, dns, tcp time.Duration, err error) {
	pb, err := startProbe(c.cfg.Self, a.obs.NetNS, "appear", "-name", name, "-timeout", "30s")
	if err != nil {
		return 0, 0, 0, err
	}
	b, err := a.start(ctx, 0, name)
	returned := time.Now()
	if err != nil {
		pb.stdin.Close()
		_, _ = pb.results()
		return 0, 0, 0, err
	}
	fmt.Fprintln(pb.stdin, b.IPs[clusterNet])
	got, perr := pb.results()
	rerr := a.remove(ctx, 0, b)
	if perr != nil || rerr != nil {
		return 0, 0, 0, errors.Join(perr, rerr)
	}
	if got["dns"].IsZero() || got["tcp"].IsZero() {
		return 0, 0, 0, fmt.Errorf("%s: not seen from host 3 within 30 s (dns %v, tcp %v)", name, !got["dns"].IsZero(), !got["tcp"].IsZero())
	}
	return b.Took, got["dns"].Sub(returned), got["tcp"].Sub(returned), nil
}

// failure is one system's side of the failure scenario.
type failure struct {
	target, observer box
	kill             func(ctx context.Context) error
	state            func(ctx context.Context) (string, error) // host 2 as host 1 lists it
	ready            string
	restart          func(ctx context.Context) error // nil: one try only
}

// scenFailure: SIGKILL host 2's daemon; host 1 stops listing it as ready, stops
// resolving its box's name and stops routing to it.
func (c *cluster) scenFailure(ctx context.Context) *csection {
	pr := c.pairs(ctx)
	ttl := 3 * time.Second
	sec := &csection{Title: "Failure: host 2's daemon SIGKILLed", Unit: "s",
		Intro: fmt.Sprintf("A box on host 2 is resolvable and reachable from the box on host 1; then pier: `pier lab kill h2` (SIGKILL of pierd; its sandbox namespaces stay, so TCP keeps answering until host 1 withdraws the route); Docker: SIGKILL of every process of host 2 (dockerd, containerd, shims, containers). Measured from the kill until host 1 lists host 2 as not ready (pier `GET /pier/v1/nodes`, Docker `GET /nodes` on the manager d1), until the name no longer resolves in host 1's box (an answer without records) and until TCP to the address stops answering. pier: %d tries (h2 restarted between them); Docker: one (its host is gone after it). Goal (issue 17): ≤ TTL + 1 s = %s (pier's default node TTL %s).", c.cfg.NFail, ttl+time.Second, ttl)}
	var fs [2]*failure
	var errs [2]error
	names := [2]string{"pier", "Docker"}
	if errs[0] = pr.err[sysPier]; errs[0] == nil {
		fs[0] = &failure{observer: pr.pier[0], ready: "ready",
			kill:    func(context.Context) error { return c.pier.lab.Kill("h2") },
			state:   func(ctx context.Context) (string, error) { return c.pier.hostState(ctx, 0, "h2") },
			restart: func(ctx context.Context) error { return c.pier.lab.Start(ctx, "h2") }}
		fs[0].target, errs[0] = c.pier.startBox(ctx, 1, "bc-fail")
	}
	if errs[1] = pr.err[sysDocker]; errs[1] == nil {
		fs[1] = &failure{observer: pr.dock[0], ready: "ready",
			kill:  func(ctx context.Context) error { return c.docker.killHost(ctx, 1) },
			state: func(ctx context.Context) (string, error) { return c.docker.nodeState(ctx, 1) }}
		fs[1].target, errs[1] = c.docker.startBox(ctx, 1, "bc-fail")
	}
	var node, dns, tcp [2][]float64
	for i := range c.cfg.NFail {
		for _, k := range []int{0, 1} {
			if errs[k] != nil || ctx.Err() != nil || (i > 0 && fs[k].restart == nil) {
				continue
			}
			n, d, t, err := c.failOnce(ctx, fs[k])
			if err != nil {
				errs[k] = err
				continue
			}
			node[k], dns[k], tcp[k] = append(node[k], n), append(dns[k], d), append(tcp[k], t)
			c.logf("failure %s: node %.2f s, dns %.2f s, tcp %.2f s", names[k], n, d, t)
			if fs[k].restart != nil && i+1 < c.cfg.NFail {
				if err := c.restartPier(ctx, fs[k]); err != nil {
					errs[k] = err
				}
			}
		}
	}
	limit := (ttl + time.Second).Seconds()
	for k := range 2 {
		goal := func(xs []float64) string {
			return fmt.Sprintf("≤ %.0f s: %s", limit, verdictOf(len(xs) > 0, len(xs) > 0 && slices.Sorted(slices.Values(xs))[len(xs)-1] <= limit))
		}
		sec.Rows = append(sec.Rows,
			crow{Scenario: "host 2 no longer listed ready", System: names[k], Samples: node[k], Err: errs[k], Goal: goal(node[k])},
			crow{Scenario: "its box's name no longer resolves", System: names[k], Samples: dns[k], Goal: goal(dns[k])},
			crow{Scenario: "its box's address no longer answers", System: names[k], Samples: tcp[k], Goal: goal(tcp[k])},
		)
	}
	sec.Notes = append(sec.Notes, "Docker's address stops answering at once because its host's processes, the containers included, died with it; pier's sandbox namespace outlives pierd, so its row is the time until host 1 stops routing there. A sample of 60 s means it had not happened when the probe gave up at 60 s (the name still resolved).")
	return sec
}

func (c *cluster) failOnce(ctx context.Context, f *failure) (node, dns, tcp float64, err error) {
	pb, err := startProbe(c.cfg.Self, f.observer.NetNS, "gone", "-name", f.target.Name, "-ip", f.target.IPs[clusterNet], "-timeout", "60s")
	if err != nil {
		return 0, 0, 0, err
	}
	if err := f.kill(ctx); err != nil {
		pb.stdin.Close()
		_, _ = pb.results()
		return 0, 0, 0, fmt.Errorf("killing host 2: %w", err)
	}
	killed := time.Now()
	fmt.Fprintln(pb.stdin, "go")
	node = -1
	for deadline := killed.Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		st, err := f.state(ctx)
		if err == nil && st != f.ready {
			node = time.Since(killed).Seconds()
			break
		}
	}
	got, err := pb.results()
	if err != nil {
		return 0, 0, 0, err
	}
	since := func(what string) float64 {
		if got[what].IsZero() {
			return 60
		}
		return got[what].Sub(killed).Seconds()
	}
	if node < 0 {
		node = 60
	}
	return node, since("dns"), since("tcp"), nil
}

// restartPier starts h2's pierd again and waits until host 1 lists it ready and
// resolves its box again.
func (c *cluster) restartPier(ctx context.Context, f *failure) error {
	if err := f.restart(ctx); err != nil {
		return fmt.Errorf("restarting h2: %w", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, _ := f.state(ctx)
		if st == f.ready {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("h2 not ready again 30 s after its restart (state %q)", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

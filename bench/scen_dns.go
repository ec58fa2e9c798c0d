package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// The DNS scenario's upstream: dnsmasq on an address of each daemon's namespace, so boxes reach it through their gateway, as they would reach a real
// resolver.
const (
	upstreamAddr = "10.253.0.1"
	dnsPeers     = 10
	dnsProbeN    = 500
)

// dnsMode is one kind of query the scenario sends.
type dnsMode struct {
	key, title string
	names      []string
}

func dnsModes() []dnsMode {
	var local, ext []string
	for i := range dnsPeers {
		local = append(local, fmt.Sprintf("pb-web%d", i))
		ext = append(ext, fmt.Sprintf("ext%d.pierbench.test", i))
	}
	return []dnsMode{{"local", "local names", local}, {"ext", "cached external names", ext}}
}

// dnsPerfResult is what one dnsperf run reported.
type dnsPerfResult struct {
	QPS, AvgMs   float64
	Sent, Lost   int
	CPUPerQuery  float64 // µs of the daemon's CPU time per answered query
	UserPerQuery float64 // of which in user space
	Rcodes       string
}

// scenDNS runs dnsperf and the one-at-a-time probe from inside a box against
// 127.0.0.11, for names of boxes on the same network and for external names the
// upstream answers (cached by pier, forwarded every time by Docker).
func (r *runner) scenDNS(ctx context.Context) *section {
	sec := &section{Title: "Embedded DNS at 127.0.0.11",
		Intro: fmt.Sprintf("From inside a box on a user-defined network with %d named peers: `dnsperf -s 127.0.0.11 -l %d` (defaults: 1 client, 100 queries in flight) run in the box's network namespace, %d runs per system, alternating; then %d queries one at a time (latency without queueing). "+
			"On 2 cores dnsperf itself needs about one core, so queries/s is bounded by the load generator too; the daemon's CPU time per query (pierd's or dockerd's, from /proc, during the dnsperf run) does not depend on it. "+
			"Local names are the peers' names; external names are answered by an upstream dnsmasq (TTL 600) on %s in the daemon's namespace, given to the box as its DNS server (`--dns`).",
			dnsPeers, int(r.cfg.DNSTime.Seconds()), r.cfg.Iter.DNS, dnsProbeN, upstreamAddr)}
	var st [2]*dnsSide
	for k, s := range r.systems() {
		st[k] = &dnsSide{}
		st[k].err = r.dnsSetup(ctx, s, st[k])
		if st[k].err == nil && !strings.Contains(readResolv(st[k].client), "nameserver 127.0.0.11") {
			why := fmt.Sprintf("the box's resolv.conf on a user-defined network does not point at 127.0.0.11 (it has %q)", firstNameserver(readResolv(st[k].client)))
			if s.Name() == "pier" {
				st[k].pending = "pier's embedded DNS is not wired into sandboxes yet (issue 5): " + why
			} else {
				st[k].err = fmt.Errorf("%s", why)
			}
		}
	}
	for _, mode := range dnsModes() {
		rows, notes := r.dnsRows(ctx, mode, st)
		sec.Rows, sec.Notes = append(sec.Rows, rows...), append(sec.Notes, notes...)
		r.logf("dns: %s done", mode.title)
	}
	for k, s := range r.systems() {
		r.teardown(ctx, s, append(st[k].peers, st[k].client), st[k].net)
	}
	return sec
}

// dnsSide is one system's setup for the DNS scenario.
type dnsSide struct {
	net     string
	client  box
	peers   []box
	err     error
	pending string
}

// dnsRows measures one kind of name on both systems.
func (r *runner) dnsRows(ctx context.Context, mode dnsMode, st [2]*dnsSide) ([]row, []string) {
	qfile := filepath.Join(r.cfg.WorkDir, "queries-"+mode.key+".txt")
	var errs [2]error
	if err := writeQueries(qfile, mode.names); err != nil {
		errs = [2]error{err, err}
	}
	for k := range 2 {
		if errs[k] == nil && st[k].err == nil && st[k].pending == "" {
			errs[k] = r.dnsWarm(ctx, st[k].client, mode.names)
		}
	}
	var perf [2][]dnsPerfResult
	var rtts [2][]float64
	skip := [2]bool{st[0].err != nil || st[0].pending != "" || errs[0] != nil, st[1].err != nil || errs[1] != nil}
	stepErrs := r.alternate(ctx, r.cfg.Iter.DNS, 0, skip, func(ctx context.Context, i int, s system) error {
		k := idx(s)
		u0, s0 := cpuTime(s.DaemonPID())
		pr, err := r.dnsperf(ctx, st[k].client, qfile)
		if err != nil {
			return err
		}
		if done := float64(pr.Sent - pr.Lost); done > 0 {
			u1, s1 := cpuTime(s.DaemonPID())
			pr.CPUPerQuery = float64((u1 - u0 + s1 - s0).Microseconds()) / done
			pr.UserPerQuery = float64((u1 - u0).Microseconds()) / done
		}
		perf[k] = append(perf[k], pr)
		probe, err := r.dnsProbe(ctx, st[k].client, mode.names, dnsProbeN)
		if err != nil {
			return err
		}
		rtts[k] = append(rtts[k], probe.RTTs...)
		return nil
	})
	var sides [5][2]side
	var notes []string
	for k := range 2 {
		err := joinErr(joinErr(st[k].err, errs[k]), stepErrs[k])
		var qps, avg, cpu, user []float64
		for _, p := range perf[k] {
			qps, avg = append(qps, p.QPS), append(avg, p.AvgMs)
			cpu, user = append(cpu, p.CPUPerQuery), append(user, p.UserPerQuery)
			if p.Lost > 0 || !strings.HasPrefix(p.Rcodes, "NOERROR") || strings.Contains(p.Rcodes, ",") {
				notes = append(notes, fmt.Sprintf("%s, %s: a dnsperf run lost %d of %d queries; response codes: %s.", r.systems()[k].Name(), mode.title, p.Lost, p.Sent, p.Rcodes))
			}
		}
		for j, xs := range [][]float64{qps, avg, rtts[k], cpu, user} {
			sides[j][k] = side{Samples: xs, Err: err, Pending: st[k].pending}
		}
	}
	return []row{
		{Key: "dns-" + mode.key + "-qps", Name: "queries/s, " + mode.title, Kind: higher, Pier: sides[0][0], Docker: sides[0][1]},
		{Key: "dns-" + mode.key + "-avg", Name: "dnsperf average latency, " + mode.title + " (ms)", Kind: lowerTime, Pier: sides[1][0], Docker: sides[1][1]},
		{Key: "dns-" + mode.key + "-rtt", Name: "one query at a time, " + mode.title + " (ms)", Kind: lowerTime, Pier: sides[2][0], Docker: sides[2][1]},
		{Key: "dns-" + mode.key + "-cpu", Name: "daemon CPU per query under dnsperf, " + mode.title + " (µs)", Kind: lowerAmount, Pier: sides[3][0], Docker: sides[3][1]},
		{Key: "dns-" + mode.key + "-user", Name: "of which user space (µs; the rest is the kernel's UDP path)", Kind: lowerAmount, Pier: sides[4][0], Docker: sides[4][1]},
	}, notes
}

// dnsSetup starts the upstream in the daemon's namespace and the boxes.
func (r *runner) dnsSetup(ctx context.Context, s system, st *dnsSide) error {
	ns := s.Netns()
	// On the namespace's loopback: local to the daemon's "host", reached by the boxes
	// through their gateway like any address of the host.
	if _, err := runIn(ctx, ns, "ip", "addr", "add", upstreamAddr+"/32", "dev", "lo"); err != nil {
		return fmt.Errorf("upstream address: %w", err)
	}
	hosts := map[string]string{}
	for i := range dnsPeers {
		hosts[fmt.Sprintf("ext%d.pierbench.test", i)] = fmt.Sprintf("192.0.2.%d", i+1)
	}
	dir := filepath.Join(r.cfg.WorkDir, "dnsmasq-"+strings.ToLower(s.Name()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if _, err := r.startHelper(startDnsmasq(dir, ns, upstreamAddr, hosts)); err != nil {
		return err
	}
	var err error
	if st.net, err = s.CreateNetwork(ctx, "pb-dns"); err != nil {
		return err
	}
	for i := range dnsPeers {
		b, err := s.StartBox(ctx, boxSpec{Name: fmt.Sprintf("pb-web%d", i), Network: st.net})
		if err != nil {
			return err
		}
		st.peers = append(st.peers, b)
	}
	st.client, err = s.StartBox(ctx, boxSpec{Name: "pb-dns-client", Network: st.net, DNS: []string{upstreamAddr}})
	return err
}

// dnsWarm asks every name once (filling caches, and checking the answers).
func (r *runner) dnsWarm(ctx context.Context, b box, names []string) error {
	res, err := r.dnsProbe(ctx, b, names, 2*len(names))
	if err != nil {
		return err
	}
	if res.Timeouts > 0 || res.Rcodes["NOERROR"] != 2*len(names) || res.NoAnswer > 0 {
		return fmt.Errorf("warm-up queries from the box got wrong answers: rcodes %v, %d without answers, %d timeouts", res.Rcodes, res.NoAnswer, res.Timeouts)
	}
	return nil
}

// dnsProbe runs `pierbench dnsprobe` in the box's network namespace.
func (r *runner) dnsProbe(ctx context.Context, b box, names []string, n int) (probeResult, error) {
	self, err := os.Executable()
	if err != nil {
		return probeResult{}, err
	}
	out, err := inNetns(ctx, b.NetNS, append([]string{self, "dnsprobe", "-n", strconv.Itoa(n)}, names...)...).Output()
	if err != nil {
		return probeResult{}, fmt.Errorf("dnsprobe in %s: %w", b.Name, err)
	}
	var res probeResult
	if err := json.Unmarshal(out, &res); err != nil {
		return probeResult{}, fmt.Errorf("dnsprobe output: %w", err)
	}
	if res.Timeouts > 0 {
		return res, fmt.Errorf("%d of %d one-at-a-time queries timed out", res.Timeouts, n)
	}
	return res, nil
}

var (
	reQPS    = regexp.MustCompile(`Queries per second:\s+([0-9.]+)`)
	reAvg    = regexp.MustCompile(`Average Latency \(s\):\s+([0-9.]+)`)
	reSent   = regexp.MustCompile(`Queries sent:\s+([0-9]+)`)
	reLost   = regexp.MustCompile(`Queries lost:\s+([0-9]+)`)
	reRcodes = regexp.MustCompile(`Response codes:\s+(.*)`)
)

// dnsperf runs dnsperf in the box's network namespace against 127.0.0.11.
func (r *runner) dnsperf(ctx context.Context, b box, qfile string) (dnsPerfResult, error) {
	out, err := runIn(ctx, b.NetNS, "dnsperf", "-s", "127.0.0.11", "-d", qfile, "-l", strconv.Itoa(int(r.cfg.DNSTime.Seconds())))
	if err != nil {
		return dnsPerfResult{}, err
	}
	return parseDNSPerf(out)
}

func parseDNSPerf(out string) (dnsPerfResult, error) {
	get := func(re *regexp.Regexp) string {
		if m := re.FindStringSubmatch(out); m != nil {
			return m[1]
		}
		return ""
	}
	qps, err1 := strconv.ParseFloat(get(reQPS), 64)
	avg, err2 := strconv.ParseFloat(get(reAvg), 64)
	if err1 != nil || err2 != nil {
		return dnsPerfResult{}, fmt.Errorf("unexpected dnsperf output: %s", out)
	}
	sent, _ := strconv.Atoi(get(reSent))
	lost, _ := strconv.Atoi(get(reLost))
	return dnsPerfResult{QPS: qps, AvgMs: avg * 1000, Sent: sent, Lost: lost, Rcodes: strings.TrimSpace(get(reRcodes))}, nil
}

func writeQueries(path string, names []string) error {
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "%s A\n", n)
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func firstNameserver(resolv string) string {
	for _, l := range strings.Split(resolv, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "nameserver" {
			return l
		}
	}
	return "no nameserver"
}

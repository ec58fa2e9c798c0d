package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// endpointPair is a client and a server namespace and the server's address.
type endpointPair struct {
	name             string
	serverNS, client string
	serverIP         string
}

// scenThroughput measures TCP throughput box↔box on one bridge with iperf3, next to
// a raw veth pair between two namespaces (the kernel's limit for this path).
func (r *runner) scenThroughput(ctx context.Context) *section {
	secs := int(r.cfg.Tput.Seconds())
	sec := &section{Title: "TCP throughput, box ↔ box on one bridge",
		Intro: fmt.Sprintf("`iperf3 -c SERVER -t %d` (one TCP stream) in one box's network namespace against `iperf3 -s` in another's, both on one user-defined bridge network; "+
			"the baseline is the same between two namespaces joined by a bare veth pair. %d runs each, the three rotating.", secs, r.cfg.Iter.Tput)}
	raw, rawErr := r.vethPair(ctx)
	type state struct {
		pair  endpointPair
		boxes []box
		net   string
		err   error
	}
	var st [2]*state
	for k, s := range r.systems() {
		st[k] = &state{}
		st[k].err = r.tputSetup(ctx, s, &st[k].net, &st[k].boxes, &st[k].pair)
	}
	var samples [3][]float64 // pier, Docker, raw
	errs := [3]error{st[0].err, st[1].err, rawErr}
	pairs := [3]endpointPair{st[0].pair, st[1].pair, raw}
	for i := range r.cfg.Iter.Tput {
		for j := range 3 {
			k := (i + j) % 3
			if errs[k] != nil || ctx.Err() != nil {
				continue
			}
			bps, err := r.iperf(ctx, pairs[k], secs)
			if err != nil {
				errs[k] = err
				continue
			}
			samples[k] = append(samples[k], bps/1e9)
		}
	}
	r.logf("throughput: done")
	r.rep.rawTput = samples[2]
	sec.Rows = []row{{Key: "tput", Name: "TCP throughput, one stream (Gbit/s)", Kind: higher,
		Pier: side{Samples: samples[0], Err: errs[0]}, Docker: side{Samples: samples[1], Err: errs[1]}}}
	if len(samples[2]) > 0 {
		rs := summarize(samples[2])
		note := fmt.Sprintf("Raw veth pair (baseline): median %s Gbit/s, p95 %s, min–max %s–%s (n=%d).", num(rs.Median), num(rs.P95), num(rs.Min), num(rs.Max), rs.N)
		for k, s := range r.systems() {
			if len(samples[k]) > 0 {
				note += fmt.Sprintf(" %s/raw: %.2f.", s.Name(), summarize(samples[k]).Median/rs.Median)
			}
		}
		sec.Notes = append(sec.Notes, note)
	}
	if errs[2] != nil {
		sec.Notes = append(sec.Notes, "Raw veth baseline failed: "+oneLine(errs[2].Error()))
	}
	for k, s := range r.systems() {
		r.teardown(ctx, s, st[k].boxes, st[k].net)
	}
	return sec
}

// vethPair makes the baseline: two namespaces joined by a veth pair.
func (r *runner) vethPair(ctx context.Context) (endpointPair, error) {
	for _, ns := range []string{nsVethA, nsVethB} {
		if err := addNetns(ctx, ns); err != nil {
			return endpointPair{}, err
		}
	}
	for _, args := range [][]string{
		{"link", "add", "pbva0", "netns", nsVethA, "type", "veth", "peer", "name", "pbvb0", "netns", nsVethB},
		{"-n", nsVethA, "addr", "add", "10.254.0.1/30", "dev", "pbva0"},
		{"-n", nsVethB, "addr", "add", "10.254.0.2/30", "dev", "pbvb0"},
		{"-n", nsVethA, "link", "set", "pbva0", "up"},
		{"-n", nsVethB, "link", "set", "pbvb0", "up"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			return endpointPair{}, err
		}
	}
	return endpointPair{name: "veth", serverNS: nsPath(nsVethA), client: nsPath(nsVethB), serverIP: "10.254.0.1"}, nil
}

func (r *runner) tputSetup(ctx context.Context, s system, netID *string, boxes *[]box, pair *endpointPair) error {
	var err error
	if *netID, err = s.CreateNetwork(ctx, "pb-tput"); err != nil {
		return err
	}
	for _, name := range []string{"pb-tput-server", "pb-tput-client"} {
		b, err := s.StartBox(ctx, boxSpec{Name: name, Network: *netID})
		if err != nil {
			return err
		}
		*boxes = append(*boxes, b)
	}
	ip := (*boxes)[0].IPs["pb-tput"]
	if ip == "" {
		return fmt.Errorf("no address of %s on pb-tput: %v", (*boxes)[0].Name, (*boxes)[0].IPs)
	}
	*pair = endpointPair{name: strings.ToLower(s.Name()), serverNS: (*boxes)[0].NetNS, client: (*boxes)[1].NetNS, serverIP: ip}
	return nil
}

// iperf runs one iperf3 test and returns the received bits per second.
func (r *runner) iperf(ctx context.Context, p endpointPair, secs int) (float64, error) {
	srv, err := r.startHelper(startProc("iperf3-"+p.name, filepath.Join(r.cfg.WorkDir, "iperf3-"+p.name+".log"),
		"nsenter", "--net="+p.serverNS, "--", "iperf3", "-s", "-1", "-B", p.serverIP))
	if err != nil {
		return 0, err
	}
	defer srv.stop(2 * time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, err := inNetns(ctx, p.client, "iperf3", "-c", p.serverIP, "-t", strconv.Itoa(secs), "-J").Output()
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
		if time.Now().After(deadline) || ctx.Err() != nil || srv.exited() {
			return 0, fmt.Errorf("iperf3 %s: %v %s (server log: %s)", p.name, err, res.Error, srv.logTail(3))
		}
		time.Sleep(50 * time.Millisecond) // the server is not listening yet
	}
}

package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"

	dclient "github.com/moby/moby/client"
	"golang.org/x/sys/unix"
)

// describe records the machine, the versions and the method.
func (r *runner) describe(ctx context.Context) {
	env := [][2]string{
		{"kernel", kernel()},
		{"CPU", fmt.Sprintf("%s, %d cores", cpuModel(), runtime.NumCPU())},
		{"memory", memTotal()},
		{"priority", fmt.Sprintf("nice %d for the benchmark, both daemons and every tool (inherited; bench/run.sh sets it, BENCH_NICE overrides)", niceness())},
	}
	if v, err := r.docker.c.ServerVersion(ctx, dclient.ServerVersionOptions{}); err == nil {
		comps := []string{}
		for _, c := range v.Components {
			if c.Name != "Engine" {
				comps = append(comps, c.Name+" "+c.Version)
			}
		}
		env = append(env, [2]string{"Docker engine", fmt.Sprintf("dockerd %s (API %s; %s)", v.Version, v.APIVersion, strings.Join(comps, ", "))})
	} else {
		env = append(env, [2]string{"Docker engine", "version unknown: " + err.Error()})
	}
	if info, err := r.docker.c.Info(ctx, dclient.InfoOptions{}); err == nil {
		i := info.Info
		env = append(env, [2]string{"Docker setup", fmt.Sprintf("storage %s, cgroup %s v%s, userland proxy on (default), iptables (%s)",
			i.Driver, i.CgroupDriver, i.CgroupVersion, firstLine("iptables", "--version"))})
	}
	env = append(env, [2]string{"pier", r.pierVersion(ctx)})
	env = append(env,
		[2]string{"tools", fmt.Sprintf("%s; %s; %s; Go %s (benchmark)", toolVersion("dnsperf", "-h"), firstLine("iperf3", "--version"), firstLine("dnsmasq", "--version"), runtime.Version())},
		[2]string{"clients", "pier: github.com/piernet/pier/client; Docker: github.com/moby/moby/client (API negotiated)"},
		[2]string{"iterations", fmt.Sprintf("network %d, connect %d, start 0 ports %d, start 200 ports %d, scale %d per N (N = %v, Docker fill budget %s), DNS %d × %s, throughput %d × %s",
			r.cfg.Iter.Network, r.cfg.Iter.Connect, r.cfg.Iter.Start0, r.cfg.Iter.Start200, r.cfg.Iter.Scale, r.cfg.Scale, r.cfg.Budget,
			r.cfg.Iter.DNS, r.cfg.DNSTime, r.cfg.Iter.Tput, r.cfg.Tput)},
	)
	r.rep.Env = env
	r.rep.Method = []string{
		"Both daemons run at once, each in a network namespace of its own (`" + nsPier + "`, `" + nsDocker + "`) that plays the host: the machine's interfaces, routes and firewall are never touched. dockerd also gets a private mount namespace with its own `/run`, and its data and exec roots under the work directory.",
		"Every operation goes through the daemons' APIs (no CLI start-up time): the time is the client-side wall time of the API call(s), over a unix socket.",
		"Each iteration runs pier and Docker back to back, pier first on even iterations and Docker first on odd ones, so drift affects both alike. One untimed warm-up round per system precedes the network, connect, 0-port start and every scale measurement.",
		"A box is a pier sandbox (`POST /pier/v1/sandboxes`) or a Docker container of a local busybox image (made with `docker import`: a tar of /bin/busybox and symlinks) running `sleep 3600`. Commands run inside boxes with `nsenter --net` into the box's namespace (pier: the sandbox's `Key`; Docker: `/proc/<pid>/ns/net`), so both use the same dnsperf and iperf3 binaries.",
		"Ratios are pier's median over Docker's; for times `N× faster` is Docker's median over pier's. Nothing is asserted: the numbers are what this machine measured in this run.",
	}
}

func (r *runner) pierVersion(ctx context.Context) string {
	c, err := dclient.New(dclient.WithHost("unix://"+pathsFor(r.cfg.WorkDir, "pier").sock), dclient.WithAPIVersionNegotiation())
	if err != nil {
		return "unknown: " + err.Error()
	}
	defer c.Close()
	v, err := c.ServerVersion(ctx, dclient.ServerVersionOptions{})
	if err != nil {
		return "unknown: " + err.Error()
	}
	return fmt.Sprintf("pierd %s (API %s), built from this tree", v.Version, v.APIVersion)
}

// niceness returns the benchmark's nice value (field 19 of /proc/self/stat).
func niceness() int {
	data, _ := os.ReadFile("/proc/self/stat")
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 17 {
		return 0
	}
	n, _ := strconv.Atoi(fields[16])
	return n
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " / ")
}

func kernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:])
}

func cpuModel() string {
	data, _ := os.ReadFile("/proc/cpuinfo")
	if m := regexp.MustCompile(`(?m)^model name\s*:\s*(.*)$`).FindStringSubmatch(string(data)); m != nil {
		return strings.TrimSpace(m[1])
	}
	return "unknown CPU"
}

func memTotal() string {
	kib := fieldKiB("/proc/meminfo", "MemTotal:")
	return fmt.Sprintf("%.1f GiB", float64(kib)/(1<<20))
}

func firstLine(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(line)
}

// toolVersion finds "Version X" in a tool's help output (dnsperf prints it there).
func toolVersion(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	if m := regexp.MustCompile(`Version ([0-9.]+)`).FindStringSubmatch(string(out)); m != nil {
		return name + " " + m[1]
	}
	return name
}

// targets judges the goals of issue 7 from the report's rows.
func targets(rep *report) []target {
	var out []target
	speed := func(goal, key string, want float64, unit string) {
		rw, ok := rep.row(key)
		t := target{Goal: goal}
		switch {
		case !ok:
			t.Measured, t.Verdict = "not run", "—"
		case rw.Pier.Pending != "":
			t.Measured, t.Verdict = "pier: pending", "pending"
		default:
			f, ok := speedup(rw)
			if !ok {
				t.Measured, t.Verdict = "no comparison (a side failed)", "—"
				break
			}
			t.Measured = fmt.Sprintf("%s× %s (pier %s, Docker %s)", ratio(f), unit,
				num(summarize(rw.Pier.Samples).Median), num(summarize(rw.Docker.Samples).Median))
			t.Verdict = verdict(f >= want)
		}
		out = append(out, t)
	}
	speed("connect ≥ 10× faster", "connect", 10, "faster")
	speed("network create ≥ 15× faster", "net-create", 15, "faster")
	out = append(out, portsTarget(rep))
	speed("DNS ≥ 5× queries/s (local names)", "dns-local-qps", 5, "the queries/s")
	out = append(out, tputTarget(rep))
	return out
}

func verdict(met bool) string {
	if met {
		return "**met**"
	}
	return "**not met**"
}

// portsTarget compares what 200 published ports add over a box without ports.
func portsTarget(rep *report) target {
	t := target{Goal: "200 published ports: ≥ 100× less memory, no extra processes"}
	r200, ok1 := rep.row("ports200-rss")
	r0, ok2 := rep.row("ports0-rss")
	p200, ok3 := rep.row("ports200-procs")
	p0, ok4 := rep.row("ports0-procs")
	switch {
	case !ok1 || !ok2 || !ok3 || !ok4:
		t.Measured, t.Verdict = "not run", "—"
		return t
	case r200.Pier.Pending != "":
		d := costOf(r200.Docker, r0.Docker)
		pd := costOf(p200.Docker, p0.Docker)
		t.Measured = fmt.Sprintf("pier: pending; Docker: 200 ports cost %s MiB RSS and %s processes", num(d), num(pd))
		t.Verdict = "pending"
		return t
	case !r200.Pier.ok() || !r200.Docker.ok() || !r0.Pier.ok() || !r0.Docker.ok():
		t.Measured, t.Verdict = "no comparison (a side failed)", "—"
		return t
	}
	pm, dm := costOf(r200.Pier, r0.Pier), costOf(r200.Docker, r0.Docker)
	pp := costOf(p200.Pier, p0.Pier)
	t.Measured = fmt.Sprintf("200 ports cost pier %s MiB RSS and %s processes, Docker %s MiB and %s processes", num(pm), num(pp), num(dm), num(costOf(p200.Docker, p0.Docker)))
	f := dm / max(pm, memFloor)
	if pm < memFloor {
		t.Measured += fmt.Sprintf(" (pier's change is below the %s MiB resolution: > %s× less memory)", num(memFloor), ratio(f))
	} else {
		t.Measured += fmt.Sprintf(" (%s× less memory)", ratio(f))
	}
	t.Verdict = verdict(f >= 100 && pp <= 0)
	return t
}

// costOf is the difference of two medians (a box with ports minus one without).
func costOf(with, without side) float64 {
	return summarize(with.Samples).Median - summarize(without.Samples).Median
}

func tputTarget(rep *report) target {
	t := target{Goal: "bridge throughput ≥ 0.95 of the raw veth pair"}
	rw, ok := rep.row("tput")
	if !ok || !rw.Pier.ok() || len(rep.rawTput) == 0 {
		t.Measured, t.Verdict = "not measured", "—"
		return t
	}
	raw := summarize(rep.rawTput).Median
	f := summarize(rw.Pier.Samples).Median / raw
	t.Measured = fmt.Sprintf("pier %.2f of raw (%s vs %s Gbit/s)", f, num(summarize(rw.Pier.Samples).Median), num(raw))
	if rw.Docker.ok() {
		t.Measured += fmt.Sprintf("; Docker %.2f", summarize(rw.Docker.Samples).Median/raw)
	}
	t.Verdict = verdict(f >= 0.95)
	return t
}

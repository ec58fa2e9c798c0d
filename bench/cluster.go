package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/piernet/pier/lab"
)

// ClusterConfig is one run of the multi-host benchmark (`make bench-cluster`).
type ClusterConfig struct {
	WorkDir  string // Docker's hosts and the probes' logs; removed at the end
	Self     string // this program (its `probe` command runs inside boxes)
	Pierd    string
	Busybox  string
	Out      string // report file ("" = stdout only)
	Command  string
	Only     []string
	Tput     time.Duration // one iperf3 run
	NTput    int           // iperf3 runs per system and stream count
	NEcho    int           // round trips of the echo client
	NConv    int           // convergence tries per system
	NFail    int           // failure tries of pier (Docker: one, its host is gone after)
	NConn    int           // ingress connections per path
	Progress io.Writer
}

// ClusterScenarios run in this order; the Docker swarm is built before them.
var ClusterScenarios = []string{"throughput", "encrypted", "latency", "ingress", "convergence", "failure"}

// DefaultClusterConfig keeps a run on a 2-core machine around 10 minutes.
func DefaultClusterConfig() ClusterConfig {
	return ClusterConfig{WorkDir: "/tmp/pierbench-cluster", Pierd: "bin/pierd", Busybox: "/bin/busybox",
		Tput: 4 * time.Second, NTput: 5, NEcho: 5000, NConv: 30, NFail: 3, NConn: 400, Progress: os.Stderr}
}

// clusterNSPrefix names the network namespaces of the Docker hosts and the raw pair.
const clusterNSPrefix = "pierbc-"

// crow is one line of a cluster table: one system's samples.
type crow struct {
	Scenario, System string
	Samples          []float64
	Err              error
	Ratio            string // against the baseline of the row's group
	Goal             string
	Note             string
}

type csection struct {
	Title, Intro string
	Unit         string
	Rows         []crow
	Notes        []string
}

// cluster holds one run.
type cluster struct {
	cfg      ClusterConfig
	start    time.Time
	lab      *lab.Lab
	pier     *pierCluster
	docker   *swarm
	raw      *rawVXLAN
	pr       *pairs
	helpers  []*daemon
	sections []*csection
	problems []string
	env      [][2]string
}

func (c *cluster) logf(format string, args ...any) {
	fmt.Fprintf(c.cfg.Progress, "[%6.1fs] %s\n", time.Since(c.start).Seconds(), fmt.Sprintf(format, args...))
}

func (c *cluster) want(s string) bool { return len(c.cfg.Only) == 0 || slices.Contains(c.cfg.Only, s) }

// RunCluster builds a 3-host pier lab, a 3-host Docker swarm and a raw VXLAN pair,
// runs the scenarios and writes the report. Everything it built is removed before it
// returns, also when ctx is cancelled or a step failed.
func RunCluster(ctx context.Context, cfg ClusterConfig, out io.Writer) error {
	if os.Geteuid() != 0 {
		return errors.New("the cluster benchmark needs root (namespaces, dockerd)")
	}
	lock, err := lockRun(cfg.WorkDir)
	if err != nil {
		return err
	}
	defer func() {
		os.Remove(lock.Name())
		lock.Close()
	}()
	c := &cluster{cfg: cfg, start: time.Now()}
	if err := sweepPrefix(ctx, clusterNSPrefix, cfg.WorkDir, nil); err != nil {
		return fmt.Errorf("removing what an earlier run left: %w", err)
	}
	if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
		return err
	}
	runErr := c.measure(ctx)
	if runErr != nil {
		c.problems = append(c.problems, "run stopped: "+runErr.Error())
	}
	c.logf("cleaning up")
	if err := c.cleanup(context.WithoutCancel(ctx)); err != nil {
		c.problems = append(c.problems, "cleanup: "+err.Error())
		runErr = errors.Join(runErr, fmt.Errorf("cleanup: %w", err))
	}
	return errors.Join(runErr, c.writeReport(out))
}

func (c *cluster) measure(ctx context.Context) error {
	c.describe(ctx)
	var err error
	c.logf("building the pier lab (3 hosts)")
	if c.pier, err = startPierCluster(ctx, c); err != nil {
		return fmt.Errorf("pier lab: %w", err)
	}
	c.logf("building the raw VXLAN pair")
	c.raw, err = newRawVXLAN(ctx, c.pier.mtu)
	if err != nil {
		c.problems = append(c.problems, "raw VXLAN pair: "+err.Error())
		c.raw = nil
	}
	c.logf("building the Docker swarm (3 dockerds)")
	if c.docker, err = startSwarm(ctx, c); err != nil {
		c.problems = append(c.problems, "Docker swarm: "+err.Error())
		c.logf("Docker swarm failed: %v", err)
		c.docker = nil
	}
	steps := map[string]func(context.Context) *csection{
		"throughput": c.scenThroughput, "encrypted": c.scenEncrypted, "latency": c.scenLatency, "ingress": c.scenIngress,
		"convergence": c.scenConvergence, "failure": c.scenFailure,
	}
	for _, name := range ClusterScenarios {
		if !c.want(name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		c.logf("scenario %s", name)
		if s := steps[name](ctx); s != nil {
			c.sections = append(c.sections, s)
		}
	}
	return ctx.Err()
}

func (c *cluster) cleanup(ctx context.Context) error {
	var errs []error
	errs = append(errs, stopAll(c.helpers, 5*time.Second))
	if c.docker != nil {
		errs = append(errs, c.docker.close(ctx))
	}
	if c.pier != nil {
		errs = append(errs, c.pier.close(ctx))
	}
	errs = append(errs, sweepPrefix(ctx, clusterNSPrefix, c.cfg.WorkDir, nil))
	if left := netnsNames(clusterNSPrefix); len(left) > 0 {
		errs = append(errs, fmt.Errorf("namespaces left: %v", left))
	}
	return errors.Join(errs...)
}

// startHelper remembers a helper process for cleanup.
func (c *cluster) startHelper(d *daemon, err error) (*daemon, error) {
	if d != nil {
		c.helpers = append(c.helpers, d)
	}
	return d, err
}

func (c *cluster) describe(ctx context.Context) {
	c.env = [][2]string{
		{"machine", fmt.Sprintf("%s, %s, %s", cpuModel(), memTotal(), kernel())},
		{"pier", "commit " + firstLine("git", "rev-parse", "--short", "HEAD") + " (pierd built from this tree)"},
		{"dockerd", firstLine("dockerd", "--version")},
		{"docker CLI (swarm set-up only)", firstLine("docker", "--version")},
		{"iperf3", firstLine("iperf3", "--version")},
		{"niceness", fmt.Sprint(niceness())},
		{"load average at start", loadAvg()},
	}
}

// ---- report ----

// pct returns the nearest-rank percentile p (0–100) of sorted xs.
func pct(sorted []float64, p float64) float64 {
	rank := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	return summarize(xs).Median
}

func (c *cluster) writeReport(out io.Writer) error {
	var b strings.Builder
	c.render(&b)
	if _, err := io.WriteString(out, b.String()); err != nil {
		return err
	}
	if c.cfg.Out == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(c.cfg.Out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(c.cfg.Out, []byte(b.String()), 0o644); err != nil {
		return err
	}
	c.logf("report written to %s", c.cfg.Out)
	return nil
}

func (c *cluster) render(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("# pier cluster vs Docker swarm vs the kernel's raw VXLAN — benchmark report\n\n")
	p("Run %s, took %s. Reproduce with `%s` (see docs/benchmarks.md).\n\n",
		c.start.UTC().Format("2006-01-02 15:04 MST"), time.Since(c.start).Round(time.Second), c.cfg.Command)
	p("## What and how\n\n| | |\n|---|---|\n")
	for _, kv := range c.env {
		p("| %s | %s |\n", kv[0], kv[1])
	}
	p("| load average at end | %s |\n\n", loadAvg())
	for _, m := range clusterMethod {
		p("- %s\n", m)
	}
	p("\n")
	for _, s := range c.sections {
		p("## %s\n\n%s\n\n", s.Title, s.Intro)
		p("| scenario | system | n | median | p95 | p99 | min–max | ratio | goal |\n|---|---|---|---|---|---|---|---|---|\n")
		var notes []string
		for _, r := range s.Rows {
			cells := [5]string{"—", "—", "—", "—", "—"}
			if len(r.Samples) > 0 {
				sorted := slices.Sorted(slices.Values(r.Samples))
				cells = [5]string{num(median(sorted)), num(pct(sorted, 95)), num(pct(sorted, 99)), num(sorted[0]) + "–" + num(sorted[len(sorted)-1])}
			}
			if r.Err != nil {
				cells[0] = "failed"
				if len(r.Samples) > 0 {
					cells[0] = num(median(r.Samples)) + " (then failed)"
				}
				notes = append(notes, fmt.Sprintf("%s, %s: %s", r.Scenario, r.System, oneLine(r.Err.Error())))
			}
			if r.Note != "" {
				notes = append(notes, fmt.Sprintf("%s, %s: %s", r.Scenario, r.System, r.Note))
			}
			p("| %s (%s) | %s | %d | %s | %s | %s | %s | %s | %s |\n", r.Scenario, s.Unit, r.System, len(r.Samples),
				cells[0], cells[1], cells[2], cells[3], cmpOr(r.Ratio, "—"), cmpOr(r.Goal, "—"))
		}
		p("\n")
		for _, n := range append(notes, s.Notes...) {
			p("- %s\n", n)
		}
		p("\n")
	}
	if len(c.problems) > 0 {
		p("## Problems during the run\n\n")
		for _, pr := range c.problems {
			p("- %s\n", oneLine(pr))
		}
		p("\n")
	}
}

var clusterMethod = []string{
	"pier: a 3-host `pier lab` (package lab): hosts h1–h3 are network namespaces with underlay addresses 192.0.2.1–3 on a bridge inside a lab namespace, each running pierd; h1 `--cluster-init` (embedded etcd), h2/h3 `--cluster-join`. One attachable overlay network; sandboxes created through each host's API.",
	"Docker: three `dockerd` (Debian docker.io) d1–d3, each in its own network namespace and a private mount namespace whose /run is a tmpfs, underlay 198.51.100.1–3 on a bridge in a lab namespace; `docker swarm init --advertise-addr` on d1, `swarm join` (workers) on d2/d3; one `--attachable` overlay; containers (`sleep`) of a busybox image made with `docker import`, created through the moby SDK.",
	"Raw: two fresh namespaces joined by a veth, a VXLAN device in each (`nolearning`, static FDB entry to the peer, dstport 4789, same MTU as pier's overlay interface) — the kernel's own tunnel, the ceiling of any VXLAN overlay here.",
	"All three share the machine's 2 vCPUs; iterations alternate between the systems (pier, Docker, raw rotating) so load from other work spreads over all of them. Loads come from the machine's iperf3 and `pierbench probe` run in the boxes' network namespaces through nsenter, the same binaries for every system.",
}

// ratioTo formats a/b.
func ratioTo(a, b []float64) string {
	if len(a) == 0 || len(b) == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", median(a)/median(b))
}

package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	dclient "github.com/moby/moby/client"

	"github.com/piernet/pier/client"
)

// Config is one benchmark run.
type Config struct {
	WorkDir  string // everything the run creates on disk; removed at the end
	Pierd    string // pierd binary
	Busybox  string // static busybox for the Docker image
	Out      string // report file ("" = stdout only)
	Command  string // how the run was started, for the report
	Only     []string
	Iter     Iterations
	Scale    []int         // members already on the network in the scale scenario
	Budget   time.Duration // Docker's time to fill the scale network; it stops at a smaller N after
	DNSTime  time.Duration // one dnsperf run
	Tput     time.Duration // one iperf3 run
	Progress io.Writer     // progress lines (stderr)
}

// Iterations are the sample counts per system.
type Iterations struct {
	Network, Connect, Start0, Start200, Scale, DNS, Tput int
}

// Scenarios, in the order they run.
var Scenarios = []string{"network", "connect", "ports", "scale", "dns", "throughput"}

// DefaultConfig keeps a full run on a 2-core machine well under 15 minutes.
func DefaultConfig() Config {
	return Config{
		WorkDir: "/tmp/pierbench", Pierd: "bin/pierd", Busybox: "/bin/busybox",
		Iter:  Iterations{Network: 20, Connect: 30, Start0: 10, Start200: 3, Scale: 10, DNS: 3, Tput: 5},
		Scale: []int{1, 100, 1000}, Budget: 240 * time.Second, DNSTime: 5 * time.Second, Tput: 5 * time.Second,
		Progress: os.Stderr,
	}
}

// runner holds one run's daemons, clients and report.
type runner struct {
	cfg     Config
	start   time.Time
	pier    *pierSys
	docker  *dockerSys
	helpers []*daemon    // dnsmasq, iperf3 servers: stopped at cleanup
	skip    map[int]bool // helper PIDs, left out of the daemons' process accounting
	rep     *report
	load0   string // /proc/loadavg when the run started

	settler      *settler // waits for pierd's deferred kernel work
	settleFailed bool     // reported once
}

func (r *runner) systems() [2]system { return [2]system{r.pier, r.docker} }

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.cfg.Progress, "[%6.1fs] %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, args...))
}

// Run performs the benchmark and writes the report to out (and cfg.Out). It
// cleans up everything it started before returning, also when ctx is cancelled.
func Run(ctx context.Context, cfg Config, out io.Writer) error {
	if os.Geteuid() != 0 {
		return errors.New("the benchmark needs root (namespaces, dockerd)")
	}
	if err := checkTools(); err != nil {
		return err
	}
	lock, err := lockRun(cfg.WorkDir)
	if err != nil {
		return err
	}
	defer func() {
		os.Remove(lock.Name())
		lock.Close()
	}()
	r := &runner{cfg: cfg, start: time.Now(), skip: map[int]bool{}, load0: loadAvg(),
		rep: &report{Started: time.Now(), Command: cfg.Command}}
	if err := sweep(ctx, cfg.WorkDir, nil); err != nil {
		return fmt.Errorf("removing what an earlier run left: %w", err)
	}
	runErr := r.measure(ctx)
	if runErr != nil {
		r.rep.Problems = append(r.rep.Problems, "run stopped: "+runErr.Error())
	}
	r.logf("cleaning up")
	if err := r.cleanup(context.WithoutCancel(ctx)); err != nil {
		r.rep.Problems = append(r.rep.Problems, "cleanup: "+err.Error())
		runErr = errors.Join(runErr, fmt.Errorf("cleanup: %w", err))
	}
	r.rep.Took = time.Since(r.start)
	r.rep.Env = append(r.rep.Env, [2]string{"load average (1/5/15 min)", "at start " + r.load0 + "; at end " + loadAvg() +
		" — other work on the machine during the run shows here; alternation spreads it over both systems"})
	r.rep.Targets = targets(r.rep)
	if err := r.writeReport(out); err != nil {
		return errors.Join(runErr, err)
	}
	return runErr
}

func checkTools() error {
	var missing []string
	for _, t := range []string{"ip", "nsenter", "unshare", "dockerd", "dnsperf", "iperf3", "dnsmasq", "iptables"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s (bench/run.sh installs them)", strings.Join(missing, ", "))
	}
	return nil
}

func (r *runner) writeReport(out io.Writer) error {
	r.rep.write(out)
	if r.cfg.Out == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(r.cfg.Out), 0o755); err != nil {
		return err
	}
	f, err := os.Create(r.cfg.Out)
	if err != nil {
		return err
	}
	r.rep.write(f)
	if err := f.Close(); err != nil {
		return err
	}
	r.logf("report written to %s", r.cfg.Out)
	return nil
}

// measure starts both daemons and runs the scenarios.
func (r *runner) measure(ctx context.Context) error {
	if err := r.startDaemons(ctx); err != nil {
		return err
	}
	r.describe(ctx)
	steps := map[string]func(context.Context) *section{
		"network": r.scenNetwork, "connect": r.scenConnect, "ports": r.scenPorts,
		"scale": r.scenScale, "dns": r.scenDNS, "throughput": r.scenThroughput,
	}
	for _, name := range Scenarios {
		if len(r.cfg.Only) > 0 && !slices.Contains(r.cfg.Only, name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		r.logf("scenario %s", name)
		if s := steps[name](ctx); s != nil {
			r.rep.Sections = append(r.rep.Sections, s)
		}
	}
	return ctx.Err()
}

// startDaemons creates the daemons' namespaces and starts pierd and dockerd there,
// then imports the busybox image into Docker.
func (r *runner) startDaemons(ctx context.Context) error {
	if err := os.MkdirAll(r.cfg.WorkDir, 0o755); err != nil {
		return err
	}
	for _, ns := range []string{nsPier, nsDocker} {
		if err := addNetns(ctx, ns); err != nil {
			return err
		}
	}
	pp := pathsFor(r.cfg.WorkDir, "pier")
	pd, err := startPierd(ctx, r.cfg.Pierd, pp)
	if pd != nil {
		r.pier = &pierSys{d: pd}
	}
	if err != nil {
		return fmt.Errorf("starting pierd: %w", err)
	}
	if r.pier.c, err = client.New("unix://" + pp.sock); err != nil {
		return err
	}
	r.logf("pierd running (pid %d)", pd.pid())
	if r.settler, err = newSettler(); err != nil {
		return fmt.Errorf("netlink handle in %s: %w", nsPier, err)
	}
	dp := pathsFor(r.cfg.WorkDir, "docker")
	dd, err := startDockerd(ctx, dp)
	if dd != nil {
		r.docker = &dockerSys{d: dd, image: "pierbench/busybox:local"}
	}
	if err != nil {
		return fmt.Errorf("starting dockerd: %w", err)
	}
	if r.docker.c, err = dclient.New(dclient.WithHost("unix://"+dp.sock), dclient.WithAPIVersionNegotiation()); err != nil {
		return err
	}
	r.logf("dockerd running (pid %d)", dd.pid())
	return r.importImage(ctx)
}

func (r *runner) importImage(ctx context.Context) error {
	tarball, err := busyboxImage(r.cfg.Busybox)
	if err != nil {
		return err
	}
	res, err := r.docker.c.ImageImport(ctx, dclient.ImageImportSource{Source: bytes.NewReader(tarball), SourceName: "-"},
		r.docker.image, dclient.ImageImportOptions{})
	if err != nil {
		return fmt.Errorf("importing the busybox image into Docker: %w", err)
	}
	_, _ = io.Copy(io.Discard, res)
	return res.Close()
}

// cleanup removes every box, stops helpers and daemons, and sweeps the namespaces
// and the work directory.
func (r *runner) cleanup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	var errs []error
	errs = append(errs, stopAll(r.helpers, 5*time.Second))
	if r.pier != nil && r.pier.c != nil && !r.pier.d.exited() {
		if err := r.pier.removeAll(ctx); err != nil {
			errs = append(errs, fmt.Errorf("removing pier sandboxes: %w", err))
		}
	}
	if r.docker != nil && r.docker.c != nil && !r.docker.d.exited() {
		r.logf("removing Docker containers")
		if err := r.docker.removeAll(ctx); err != nil {
			errs = append(errs, fmt.Errorf("removing Docker containers: %w", err))
		}
		r.docker.c.Close()
	}
	var ds []*daemon
	if r.pier != nil {
		ds = append(ds, r.pier.d)
	}
	if r.docker != nil {
		ds = append(ds, r.docker.d)
	}
	r.settler.close()
	errs = append(errs, stopAll(ds, 30*time.Second))
	errs = append(errs, sweep(ctx, r.cfg.WorkDir, nil))
	if left := netnsNames(nsPrefix); len(left) > 0 {
		errs = append(errs, fmt.Errorf("namespaces left: %v", left))
	}
	return errors.Join(errs...)
}

// startHelper starts a helper process and remembers it for cleanup and accounting.
func (r *runner) startHelper(d *daemon, err error) (*daemon, error) {
	if d != nil {
		r.helpers = append(r.helpers, d)
		r.skip[d.pid()] = true
	}
	return d, err
}

// alternate runs step n times on both systems, pier first on even iterations and
// Docker first on odd ones, after warm untimed rounds (i < 0: the step must not
// record them). A system whose step fails is not run again; its error is returned
// at its index (0 pier, 1 Docker). skip[i] leaves a system out.
func (r *runner) alternate(ctx context.Context, n, warm int, skip [2]bool, step func(ctx context.Context, i int, s system) error) [2]error {
	var errs [2]error
	sys := r.systems()
	for i := -warm; i < n; i++ {
		order := []int{0, 1}
		if i%2 != 0 {
			order = []int{1, 0}
		}
		for _, k := range order {
			if skip[k] || errs[k] != nil {
				continue
			}
			if err := ctx.Err(); err != nil {
				errs[k] = err
				continue
			}
			errs[k] = step(ctx, i, sys[k])
		}
	}
	return errs
}

// ms converts a duration to milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

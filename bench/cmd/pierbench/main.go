// Command pierbench benchmarks pier against the Docker engine side by side and
// writes a Markdown report (see docs/benchmarks.md). All logic lives in package
// bench; this main parses flags and calls bench.Run. Run it as root, normally
// through `make bench-docker` (bench/run.sh), which installs what it needs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/piernet/pier/bench"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "dnsprobe" {
		if err := bench.DNSProbe(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "pierbench dnsprobe:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		if err := bench.Probe(os.Args[2:], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "pierbench probe:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "cluster" {
		cfg, err := parseCluster(os.Args[2:])
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "pierbench cluster:", err)
			os.Exit(2)
		}
		ctx, cancel := interruptible()
		defer cancel()
		if err := bench.RunCluster(ctx, cfg, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "pierbench cluster:", err)
			os.Exit(1)
		}
		return
	}
	cfg, err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "pierbench:", err)
		os.Exit(2)
	}
	ctx, cancel := interruptible()
	defer cancel()
	if err := bench.Run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "pierbench:", err)
		os.Exit(1)
	}
}

// interruptible returns a context that Ctrl-C, SIGTERM and SIGHUP cancel; cleanup
// still runs. Later signals are caught too, so a second Ctrl-C cannot leave daemons
// and namespaces behind.
func interruptible() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		for range sigs {
			fmt.Fprintln(os.Stderr, "pierbench: interrupted, cleaning up everything it started (this can take a minute)…")
			cancel()
		}
	}()
	return ctx, cancel
}

// parseCluster reads the flags of `pierbench cluster`.
func parseCluster(args []string) (bench.ClusterConfig, error) {
	cfg := bench.DefaultClusterConfig()
	fs := flag.NewFlagSet("pierbench cluster", flag.ContinueOnError)
	fs.StringVar(&cfg.Pierd, "pierd", cfg.Pierd, "pierd `binary` to benchmark")
	fs.StringVar(&cfg.Busybox, "busybox", cfg.Busybox, "static busybox `binary` for the Docker image")
	fs.StringVar(&cfg.WorkDir, "workdir", cfg.WorkDir, "work `dir` (removed before and after the run)")
	fs.StringVar(&cfg.Out, "out", "bench/results/"+time.Now().Format("2006-01-02")+"-cluster.md", "also write the report to `file` (empty: stdout only)")
	only := fs.String("only", "", "comma-separated `scenarios` to run: "+strings.Join(bench.ClusterScenarios, ","))
	fs.DurationVar(&cfg.Tput, "tput-time", cfg.Tput, "length of one iperf3 run")
	fs.IntVar(&cfg.NTput, "n-tput", cfg.NTput, "iperf3 runs per system and stream count")
	fs.IntVar(&cfg.NEcho, "n-echo", cfg.NEcho, "echo round trips per system")
	fs.IntVar(&cfg.NConv, "n-conv", cfg.NConv, "convergence tries per system")
	fs.IntVar(&cfg.NFail, "n-fail", cfg.NFail, "failure tries of pier")
	fs.IntVar(&cfg.NConn, "n-conn", cfg.NConn, "ingress connections per path")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
		for _, o := range cfg.Only {
			if !slices.Contains(bench.ClusterScenarios, o) {
				return cfg, fmt.Errorf("unknown scenario %q in -only (have %s)", o, strings.Join(bench.ClusterScenarios, ","))
			}
		}
	}
	self, err := os.Executable()
	if err != nil {
		return cfg, err
	}
	cfg.Self = self
	cfg.Command = "make bench-cluster"
	var shown []string
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "pierd", "busybox", "out", "workdir":
		default:
			shown = append(shown, "-"+f.Name+"="+f.Value.String())
		}
	})
	if len(shown) > 0 {
		cfg.Command = "bench/cluster.sh " + strings.Join(shown, " ")
	}
	return cfg, nil
}

func parse(args []string) (bench.Config, error) {
	cfg := bench.DefaultConfig()
	fs := flag.NewFlagSet("pierbench", flag.ContinueOnError)
	fs.StringVar(&cfg.Pierd, "pierd", cfg.Pierd, "pierd `binary` to benchmark")
	fs.StringVar(&cfg.Busybox, "busybox", cfg.Busybox, "static busybox `binary` for the Docker image")
	fs.StringVar(&cfg.WorkDir, "workdir", cfg.WorkDir, "work `dir` (removed before and after the run)")
	fs.StringVar(&cfg.Out, "out", "bench/results/"+time.Now().Format("2006-01-02")+".md", "also write the report to `file` (empty: stdout only)")
	only := fs.String("only", "", "comma-separated `scenarios` to run: "+strings.Join(bench.Scenarios, ","))
	fs.IntVar(&cfg.Iter.Network, "n-network", cfg.Iter.Network, "network create/delete iterations")
	fs.IntVar(&cfg.Iter.Connect, "n-connect", cfg.Iter.Connect, "connect/disconnect iterations")
	fs.IntVar(&cfg.Iter.Start0, "n-start0", cfg.Iter.Start0, "start iterations without ports")
	fs.IntVar(&cfg.Iter.Start200, "n-start200", cfg.Iter.Start200, "start iterations with 200 ports")
	fs.IntVar(&cfg.Iter.Scale, "n-scale", cfg.Iter.Scale, "connect/disconnect iterations per N")
	fs.IntVar(&cfg.Iter.DNS, "n-dns", cfg.Iter.DNS, "dnsperf runs per kind of name")
	fs.IntVar(&cfg.Iter.Tput, "n-tput", cfg.Iter.Tput, "iperf3 runs")
	scale := fs.String("scale", "1,100,1000", "boxes already on the network, comma-separated")
	fs.DurationVar(&cfg.Budget, "docker-fill-budget", cfg.Budget, "time Docker gets to fill the scale network")
	fs.DurationVar(&cfg.DNSTime, "dns-time", cfg.DNSTime, "length of one dnsperf run")
	fs.DurationVar(&cfg.Tput, "tput-time", cfg.Tput, "length of one iperf3 run")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
	}
	cfg.Scale = nil
	for _, f := range strings.Split(*scale, ",") {
		var n int
		if _, err := fmt.Sscan(f, &n); err != nil || n < 1 {
			return cfg, fmt.Errorf("bad -scale entry %q", f)
		}
		cfg.Scale = append(cfg.Scale, n)
	}
	cfg.Command = "make bench-docker"
	var shown []string
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "pierd", "busybox", "out", "workdir": // where things are, not what is measured
		default:
			shown = append(shown, "-"+f.Name+"="+f.Value.String())
		}
	})
	if len(shown) > 0 {
		cfg.Command = "bench/run.sh " + strings.Join(shown, " ")
	}
	for _, o := range cfg.Only {
		if !slices.Contains(bench.Scenarios, o) {
			return cfg, fmt.Errorf("unknown scenario %q in -only (have %s)", o, strings.Join(bench.Scenarios, ","))
		}
	}
	return cfg, nil
}

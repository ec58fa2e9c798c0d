// Package daemon is pierd: it reads the configuration (embedded defaults, an optional
// JSON file, flags), opens the pier stack, ensures the predefined networks and serves
// the API on unix sockets and mutual-TLS TCP listeners until its context is cancelled.
// It owns process-level concerns only (config, listeners, shutdown); networking lives in
// the stack and the controller, the wire format in package api.
package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/ipam"
)

// Defaults.
const (
	DefaultDataRoot = "/var/lib/pier"
	DefaultExecRoot = "/run/pier"
	DefaultHost     = "unix:///run/pier/pier.sock"

	DefaultSandboxStopTimeout = 5 // seconds
)

// Config is pierd's configuration. The JSON names are those of the --config file
// (Docker's daemon.json names where Docker has the setting).
type Config struct {
	DataRoot            string                `json:"data-root"`
	ExecRoot            string                `json:"exec-root"`
	Hosts               []string              `json:"hosts"`
	TLSVerify           bool                  `json:"tlsverify"`
	TLSCACert           string                `json:"tlscacert"`
	TLSCert             string                `json:"tlscert"`
	TLSKey              string                `json:"tlskey"`
	DefaultBridge       bool                  `json:"default-bridge"`
	DefaultAddressPools []ipam.PredefinedPool `json:"default-address-pools"`
	LogLevel            string                `json:"log-level"`
	ClusterConfig                             // cluster-* settings, flat in the file (cluster_config.go)
	// SandboxStopTimeout is how many seconds a forced sandbox delete waits after
	// SIGTERM before it SIGKILLs the sandbox's processes.
	SandboxStopTimeout int `json:"sandbox-stop-timeout"`

	LogOutput io.Writer `json:"-"` // default os.Stderr
}

// Defaults returns the embedded defaults: pierd needs no configuration.
func Defaults() Config {
	return Config{DataRoot: DefaultDataRoot, ExecRoot: DefaultExecRoot, Hosts: []string{DefaultHost},
		DefaultBridge: true, LogLevel: "info", SandboxStopTimeout: DefaultSandboxStopTimeout}
}

// ParseArgs builds the configuration from the command line: defaults, then the
// --config file if given, then the flags that were set. It returns flag.ErrHelp for
// -h/--help (after printing usage to out).
func ParseArgs(args []string, out io.Writer) (Config, error) {
	fs, flags := newFlagSet()
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(out, fs)
		}
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q (pierd takes flags only)", fs.Arg(0))
	}
	cfg := Defaults()
	if flags.configFile != "" {
		var err error
		if cfg, err = LoadFile(flags.configFile); err != nil {
			return Config{}, err
		}
	}
	fs.Visit(func(f *flag.Flag) { flags.apply(f.Name, &cfg) })
	return cfg, cfg.Validate()
}

// flagValues holds parsed flag values until they are applied over the file's.
type flagValues struct {
	configFile string
	c          Config
	hosts      listFlag
}

func newFlagSet() (*flag.FlagSet, *flagValues) {
	fs := flag.NewFlagSet("pierd", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; ParseArgs prints usage for --help
	fs.Usage = func() {}
	v := &flagValues{c: Defaults()}
	fs.StringVar(&v.configFile, "config", "", "read settings from this JSON `file` (flags override it)")
	fs.StringVar(&v.c.DataRoot, "data-root", DefaultDataRoot, "`dir` for persistent state")
	fs.StringVar(&v.c.ExecRoot, "exec-root", DefaultExecRoot, "`dir` for runtime state (namespaces, sandbox files)")
	fs.Var(&v.hosts, "H", "API `address`: unix:///path or tcp://host:port (repeatable; tcp needs --tlsverify)")
	fs.Var(&v.hosts, "host", "same as -H `address`")
	fs.BoolVar(&v.c.TLSVerify, "tlsverify", false, "require mutual TLS on tcp:// listeners")
	fs.StringVar(&v.c.TLSCACert, "tlscacert", "", "CA `file` client certificates must be signed by")
	fs.StringVar(&v.c.TLSCert, "tlscert", "", "server certificate `file`")
	fs.StringVar(&v.c.TLSKey, "tlskey", "", "server key `file`")
	fs.BoolVar(&v.c.DefaultBridge, "default-bridge", true, "create the default network \"bridge\" (bridge pier0)")
	fs.Var((*poolsFlag)(&v.c.DefaultAddressPools), "default-address-pool", "automatic subnets come from `base=CIDR,size=N` (repeatable)")
	fs.StringVar(&v.c.LogLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	addClusterFlags(fs, &v.c.ClusterConfig)
	fs.IntVar(&v.c.SandboxStopTimeout, "sandbox-stop-timeout", DefaultSandboxStopTimeout,
		"`seconds` sandbox rm -f waits after SIGTERM before it SIGKILLs the sandbox's processes")
	return fs, v
}

func usage(out io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(out, "Usage: pierd [flags]\n\npierd is pier's network daemon: a Docker-compatible network API.\n\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) { printFlag(out, f) })
}

// printFlag prints one flag GNU-style ("--data-root dir"), as users type them.
func printFlag(out io.Writer, f *flag.Flag) {
	arg, usage := flag.UnquoteUsage(f)
	dash := "--"
	if len(f.Name) == 1 {
		dash = "-"
	}
	line := "  " + dash + f.Name
	if arg != "" {
		line += " " + arg
	}
	if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "[]" {
		usage += fmt.Sprintf(" (default %s)", f.DefValue)
	}
	fmt.Fprintf(out, "%-44s %s\n", line, usage)
}

// apply copies the value of the flag named name over cfg.
func (v *flagValues) apply(name string, cfg *Config) {
	switch name {
	case "data-root":
		cfg.DataRoot = v.c.DataRoot
	case "exec-root":
		cfg.ExecRoot = v.c.ExecRoot
	case "H", "host":
		cfg.Hosts = v.hosts
	case "tlsverify":
		cfg.TLSVerify = v.c.TLSVerify
	case "tlscacert":
		cfg.TLSCACert = v.c.TLSCACert
	case "tlscert":
		cfg.TLSCert = v.c.TLSCert
	case "tlskey":
		cfg.TLSKey = v.c.TLSKey
	case "default-bridge":
		cfg.DefaultBridge = v.c.DefaultBridge
	case "default-address-pool":
		cfg.DefaultAddressPools = v.c.DefaultAddressPools
	case "log-level":
		cfg.LogLevel = v.c.LogLevel
	case "sandbox-stop-timeout":
		cfg.SandboxStopTimeout = v.c.SandboxStopTimeout
	default:
		applyCluster(name, &v.c.ClusterConfig, &cfg.ClusterConfig)
	}
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// poolsFlag is the repeatable --default-address-pool flag.
type poolsFlag []ipam.PredefinedPool

func (p *poolsFlag) String() string {
	var ss []string
	for _, pp := range *p {
		ss = append(ss, pp.String())
	}
	return strings.Join(ss, " ")
}

func (p *poolsFlag) Set(s string) error {
	pp, err := ipam.ParsePredefinedPool(s)
	if err != nil {
		return err
	}
	*p = append(*p, pp)
	return nil
}

// LoadFile reads a JSON configuration file over the defaults. Unknown keys are an
// error: a typo in a config file must not be silently ignored.
func LoadFile(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("reading config file: %w", err)
	}
	cfg := Defaults()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return Config{}, errdefs.InvalidArgument("config file %s: %w", path, err)
	}
	return cfg, nil
}

// Validate checks the configuration and canonicalises the address pools.
func (c *Config) Validate() error {
	if c.DataRoot == "" || c.ExecRoot == "" {
		return errdefs.InvalidArgument("data root and exec root must not be empty")
	}
	if c.SandboxStopTimeout < 1 {
		return errdefs.InvalidArgument("sandbox-stop-timeout %d: want 1 or more seconds", c.SandboxStopTimeout)
	}
	if len(c.Hosts) == 0 {
		return errdefs.InvalidArgument("no API address: give at least one -H")
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	for i, p := range c.DefaultAddressPools {
		pp, err := ipam.ParsePredefinedPool(p.String())
		if err != nil {
			return err
		}
		c.DefaultAddressPools[i] = pp
	}
	if err := c.ClusterConfig.validate(); err != nil {
		return err
	}
	_, err := listenSpecs(*c)
	return err
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, errdefs.InvalidArgument("invalid log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

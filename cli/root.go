package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/piernet/pier/client"
)

// HostEnv names the environment variable that sets the default pierd address.
const HostEnv = "PIER_HOST"

// Streams are a command's standard streams.
type Streams struct {
	In  io.Reader
	Out io.Writer
	Err io.Writer
}

// Options configure the CLI; zero fields take the process's own values.
type Options struct {
	Streams
	// Getenv reads the environment (PIER_HOST); default os.Getenv.
	Getenv func(string) string
	// Self is the executable `pier exec` re-runs as its namespace child;
	// default /proc/self/exe.
	Self string
}

func (o Options) withDefaults() Options {
	if o.In == nil {
		o.In = os.Stdin
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Err == nil {
		o.Err = os.Stderr
	}
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.Self == "" {
		o.Self = "/proc/self/exe"
	}
	return o
}

// Run runs the pier command line with args (without the program name) and returns
// the process exit status. Errors are written to opts.Err.
func Run(ctx context.Context, args []string, opts Options) int {
	opts = opts.withDefaults()
	root := NewCommand(opts)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return reportError(opts.Err, err)
}

// NewCommand returns the root `pier` command.
func NewCommand(opts Options) *cobra.Command {
	opts = opts.withDefaults()
	a := &app{Options: opts}
	root := &cobra.Command{
		Use:   "pier",
		Short: "Docker-grade container networking: networks, sandboxes and processes in them",
		Long: `pier manages pierd's networks and sandboxes (network namespaces with their own
hosts, resolv.conf and hostname), and runs processes inside sandboxes.

pierd speaks the network part of the Docker Engine API, so "docker -H" works too.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetIn(opts.In)
	root.SetOut(opts.Out)
	root.SetErr(opts.Err)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageErr(cmd, err) })
	a.addGlobalFlags(root)
	root.AddCommand(a.networkCommand(), a.sandboxCommand(), a.execCommand(), a.runCommand(), a.portCommand(), a.enterCommand(),
		a.nodeCommand(), a.clusterCommand(), a.labCommand(), a.serviceCommand())
	disableFlagsInUseLine(root) // usage lines say [OPTIONS], as docker's
	return root
}

func disableFlagsInUseLine(cmd *cobra.Command) {
	cmd.DisableFlagsInUseLine = true
	for _, c := range cmd.Commands() {
		disableFlagsInUseLine(c)
	}
}

// app is the state shared by the commands of one invocation.
type app struct {
	Options
	host string
	tls  tlsFlags
	api  *client.Client // built on first use
}

type tlsFlags struct {
	verify        bool
	ca, cert, key string
}

func (a *app) addGlobalFlags(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVarP(&a.host, "host", "H", "", "pierd address: unix:///path or tcp://host:port (default $"+HostEnv+" or "+client.DefaultHost+")")
	f.BoolVar(&a.tls.verify, "tlsverify", false, "use TLS and verify pierd's certificate (tcp:// hosts)")
	f.StringVar(&a.tls.ca, "tlscacert", "", "trust certificates signed by this CA (implies --tlsverify)")
	f.StringVar(&a.tls.cert, "tlscert", "", "client certificate for mutual TLS")
	f.StringVar(&a.tls.key, "tlskey", "", "client key for mutual TLS")
}

// client returns the API client, building it on first use.
func (a *app) client() (*client.Client, error) {
	if a.api != nil {
		return a.api, nil
	}
	host := a.host
	if host == "" {
		host = a.Getenv(HostEnv)
	}
	var opts []client.Option
	if a.tls.verify || a.tls.ca != "" || a.tls.cert != "" {
		opts = append(opts, client.WithTLS(client.TLSConfig{CAFile: a.tls.ca, CertFile: a.tls.cert, KeyFile: a.tls.key}))
	}
	c, err := client.New(host, opts...)
	if err != nil {
		return nil, err
	}
	a.api = c
	return c, nil
}

// Errors and exit statuses.

// Exit statuses, as docker's.
const (
	exitFailure   = 1   // a command failed
	exitPier      = 125 // pier itself failed (usage, daemon) in run/exec
	exitCannotRun = 126 // the command cannot be invoked
	exitNotFound  = 127 // the command was not found
)

// exitStatus ends the process with a status and no message (already reported).
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// usageError is a command-line mistake; it is reported with a pointer to --help.
type usageError struct {
	cmd string // command path, e.g. "pier network create"
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErr(cmd *cobra.Command, err error) error {
	return &usageError{cmd: cmd.CommandPath(), err: err}
}

// reportError prints err the way docker does and returns the exit status.
func reportError(w io.Writer, err error) int {
	if err == nil {
		return 0
	}
	var status exitStatus
	if errors.As(err, &status) {
		return int(status)
	}
	var usage *usageError
	if errors.As(err, &usage) {
		fmt.Fprintf(w, "%s: %v\nSee '%s --help'.\n", usage.cmd, usage.err, usage.cmd)
		return exitPier
	}
	var apiErr *client.APIError
	if errors.As(err, &apiErr) {
		fmt.Fprintf(w, "Error response from pierd: %s\n", apiErr.Message)
		return exitFailure
	}
	fmt.Fprintf(w, "Error: %v\n", err)
	return exitFailure
}

// Argument validators with docker's messages, reported as usage errors.

func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErr(cmd, fmt.Errorf("%q requires exactly %d %s", cmd.CommandPath(), n, plural(n, "argument")))
		}
		return nil
	}
}

func minArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return usageErr(cmd, fmt.Errorf("%q requires at least %d %s", cmd.CommandPath(), n, plural(n, "argument")))
		}
		return nil
	}
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErr(cmd, fmt.Errorf("%q accepts no arguments", cmd.CommandPath()))
	}
	return nil
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

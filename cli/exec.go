package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/client"
)

// procFlags describe the process `exec` and `run` start.
type procFlags struct {
	env     []string // KEY=VALUE, or KEY to pass pier's own value
	workdir string
}

func (f *procFlags) register(fl *pflag.FlagSet) {
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable (KEY=VALUE, or KEY to pass its current value); repeatable")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "working directory of the command")
}

// environ returns the command's environment: pier's own plus --env.
func (f procFlags) environ(getenv func(string) string) []string {
	env := os.Environ()
	for _, e := range f.env {
		if strings.Contains(e, "=") {
			env = append(env, e)
		} else if v := getenv(e); v != "" {
			env = append(env, e+"="+v)
		}
	}
	return env
}

func (a *app) execCommand() *cobra.Command {
	var p procFlags
	cmd := &cobra.Command{
		Use:   "exec [OPTIONS] SANDBOX [--] COMMAND [ARG...]",
		Short: "Run a command inside a sandbox",
		Long: `Run a command inside a sandbox: in its network namespace, with its hosts, resolv.conf
and hostname files over /etc/hosts, /etc/resolv.conf and /etc/hostname (in a private
mount namespace) and its hostname (in a private UTS namespace). Everything else (the
filesystem, users, processes) is the host's. Standard streams are attached; pier exits
with the command's exit status (128+N if it was killed by signal N, 125 if pier
failed, 126 if the command cannot run, 127 if it was not found). Needs root.`,
		Example: `  pier exec web -- ip addr
  pier exec web cat /etc/hosts
  pier exec -e DEBUG=1 -w /srv web -- busybox httpd -f -p 8080`,
		Args:              minArgs(2),
		ValidArgsFunction: a.completeSandboxes,
		RunE: func(cmd *cobra.Command, args []string) error {
			argv := commandArgs(args[1:])
			if len(argv) == 0 {
				return usageErr(cmd, fmt.Errorf("no command given after %q", "--"))
			}
			return a.exec(cmd.Context(), args[0], p, argv)
		},
	}
	cmd.Flags().SetInterspersed(false)
	p.register(cmd.Flags())
	return cmd
}

// commandArgs drops a "--" that separates the sandbox from the command (pflag keeps
// it once parsing stopped at the sandbox argument).
func commandArgs(args []string) []string {
	if len(args) > 0 && args[0] == "--" {
		return args[1:]
	}
	return args
}

func (a *app) exec(ctx context.Context, ref string, p procFlags, argv []string) error {
	c, err := a.client()
	if err != nil {
		return a.pierFailed(err)
	}
	sb, err := c.SandboxInspect(ctx, ref)
	if err != nil {
		return a.pierFailed(err)
	}
	return a.runIn(ctx, sb, p, argv)
}

// runIn runs argv in sb and turns its exit status into pier's.
func (a *app) runIn(ctx context.Context, sb types.SandboxInfo, p procFlags, argv []string) error {
	if err := ctx.Err(); err != nil { // interrupted before the command started
		return a.pierFailed(err)
	}
	spec := enterSpec{netns: sb.Key, dir: sb.Dir, hostname: sb.Hostname, workdir: p.workdir, argv: argv}
	code, err := runForwardingSignals(a.childCommand(spec, p.environ(a.Getenv)))
	if errors.Is(err, syscall.EPERM) {
		err = fmt.Errorf("%w (new mount and UTS namespaces need root)", err)
	}
	if err != nil {
		return a.pierFailed(fmt.Errorf("starting the command in sandbox %s: %w", sb.Name, err))
	}
	if code != 0 {
		return exitStatus(code)
	}
	return nil
}

// pierFailed reports err and returns docker's "the runtime failed" status.
func (a *app) pierFailed(err error) error {
	reportError(a.Err, err)
	return exitStatus(exitPier)
}

// childCommand is pier re-executed as `__enter` in new mount and UTS namespaces.
func (a *app) childCommand(spec enterSpec, env []string) *exec.Cmd {
	cmd := exec.Command(a.Self, spec.args()...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = a.In, a.Out, a.Err
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS}
	return cmd
}

// run

type runFlags struct {
	sandbox sandboxFlags
	proc    procFlags
	rm      bool
}

func (a *app) runCommand() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run [OPTIONS] [--] COMMAND [ARG...]",
		Short: "Create a sandbox and run a command in it",
		Long: `Create a sandbox (as "pier sandbox create") and run a command in it (as "pier exec").
With --rm the sandbox is removed when the command exits, also when pier is
interrupted (SIGINT/SIGTERM are forwarded to the command first). pier exits with
the command's exit status. Needs root.`,
		Example: `  pier run --rm --network app --name web -- busybox httpd -f -p 80
  pier run --rm --network app -- busybox wget -qO- http://web/
  pier run --rm --network app --ip 10.89.0.50 --alias api -- ./server`,
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.run(cmd.Context(), f, args)
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false)
	f.sandbox.register(fl)
	f.proc.register(fl)
	fl.BoolVar(&f.rm, "rm", false, "remove the sandbox when the command exits")
	return cmd
}

func (a *app) run(ctx context.Context, f runFlags, argv []string) error {
	sb, err := a.createSandbox(ctx, f.sandbox)
	if err != nil {
		return a.pierFailed(err)
	}
	err = a.runIn(ctx, sb, f.proc, argv)
	if f.rm {
		a.removeAfterRun(ctx, sb)
	}
	return err
}

// removeAfterRun removes a --rm sandbox, also when ctx was canceled by a signal.
func (a *app) removeAfterRun(ctx context.Context, sb types.SandboxInfo) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	c, err := a.client()
	if err == nil {
		err = c.SandboxRemove(ctx, sb.ID, client.SandboxRemoveOptions{Force: true})
	}
	if err != nil {
		reportError(a.Err, fmt.Errorf("removing sandbox %s: %w", sb.Name, err))
	}
}

package cli

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/spf13/cobra"

	"github.com/piernet/pier/lab"
)

// labCommand is `pier lab`: a cluster of simulated hosts on this machine (root).
func (a *app) labCommand() *cobra.Command {
	var name, root string
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a pier cluster of simulated hosts on this machine (needs root)",
		Long: `pier lab builds simulated hosts h1…hN, each a network namespace with an underlay address
from 192.0.2.0/24 on a bridge inside a lab namespace, and runs a pierd in each, all
joined to one cluster store (etcd) in the lab namespace. Nothing touches this machine's
own interfaces, routes or firewall.`,
		Args: noArgs,
		RunE: helpRunE,
	}
	cmd.PersistentFlags().StringVar(&name, "name", "pier", "the lab's name (several labs can coexist)")
	cmd.PersistentFlags().StringVar(&root, "root", lab.DefaultRoot, "where labs keep their state")
	open := func() (*lab.Lab, error) { return lab.Open(root, name) }

	var hosts int
	var pierdArgs []string
	var external bool
	up := &cobra.Command{
		Use:   "up [OPTIONS]",
		Short: "Build a lab and start a pierd on each of its hosts",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Up(cmd.Context(), lab.Options{Name: name, Hosts: hosts, Root: root, PierdArgs: pierdArgs, External: external})
			if err != nil {
				return err
			}
			fmt.Fprintf(a.Out, "lab %s is up: %d hosts, cluster store %s\n", l.Name, len(l.Hosts), l.StoreURL())
			for _, h := range l.Hosts {
				fmt.Fprintf(a.Out, "  %-4s %-12s pier -H unix://%s …\n", h.Name, h.Addr, h.Socket)
			}
			fmt.Fprintf(a.Out, "  client %s  pier lab exec client -- CMD\n", lab.ClientAddr)
			return nil
		},
	}
	up.Flags().IntVar(&hosts, "hosts", 3, "number of hosts")
	up.Flags().StringArrayVar(&pierdArgs, "pierd-arg", nil, "extra pierd flag for every host (repeatable)")
	up.Flags().BoolVar(&external, "external-store", false, "run the cluster store as an external etcd (Debian's etcd-server) in the lab namespace instead of embedded members")

	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the labs, or the hosts of --name",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("name") {
				for _, n := range lab.List(root) {
					fmt.Fprintln(a.Out, n)
				}
				return nil
			}
			l, err := open()
			if err != nil {
				return err
			}
			fmt.Fprintf(a.Out, "HOST\tADDRESS\tPIERD\tSOCKET\n")
			for _, h := range l.Hosts {
				state := "stopped"
				if h.PID > 0 && processAlive(h.PID) {
					state = fmt.Sprintf("running (pid %d)", h.PID)
				}
				fmt.Fprintf(a.Out, "%s\t%s\t%s\tunix://%s\n", h.Name, h.Addr, state, h.Socket)
			}
			return nil
		},
	}
	exe := &cobra.Command{
		Use:   "exec HOST|client -- CMD [ARG...]",
		Short: "Run a command in a host's network namespace, with PIER_HOST and DOCKER_HOST set to its pierd",
		Args:  minArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			c, err := l.Command(cmd.Context(), args[0], args[1:]...)
			if err != nil {
				return err
			}
			c.Stdin, c.Stdout, c.Stderr = a.In, a.Out, a.Err
			err = c.Run()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code, _ := exitCode(ee.ProcessState, nil)
				return exitStatus(code)
			}
			return err
		},
	}
	hostCmd := func(use, short string, fn func(*lab.Lab, *cobra.Command, string) error) *cobra.Command {
		return &cobra.Command{Use: use + " HOST", Short: short, Args: exactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				l, err := open()
				if err != nil {
					return err
				}
				return fn(l, cmd, args[0])
			}}
	}
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop everything the lab runs and remove everything it made",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := open()
			if err != nil {
				return err
			}
			return l.Down()
		},
	}
	cmd.AddCommand(up, ls, exe, down,
		hostCmd("kill", "SIGKILL a host's pierd", func(l *lab.Lab, _ *cobra.Command, h string) error { return l.Kill(h) }),
		hostCmd("start", "Start a host's pierd again", func(l *lab.Lab, c *cobra.Command, h string) error { return l.Start(c.Context(), h) }),
		hostCmd("partition", "Take a host's underlay link down", func(l *lab.Lab, _ *cobra.Command, h string) error { return l.Partition(h) }),
		hostCmd("heal", "Bring a host's underlay link back up", func(l *lab.Lab, _ *cobra.Command, h string) error { return l.Heal(h) }))
	return cmd
}

func processAlive(pid int) bool {
	out, err := exec.Command("ps", "-o", "stat=", "-p", fmt.Sprint(pid)).Output()
	return err == nil && !strings.HasPrefix(strings.TrimSpace(string(out)), "Z")
}

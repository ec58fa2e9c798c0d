package cli

import (
	"fmt"
	"net"
	"strconv"

	"github.com/spf13/cobra"
)

// port

func (a *app) portCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "port SANDBOX",
		Short: "List the published port bindings of a sandbox",
		Example: `  pier port web
  80/tcp -> 0.0.0.0:8080
  80/tcp -> [::]:8080`,
		Args:              exactArgs(1),
		ValidArgsFunction: a.completeSandboxes,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			sb, err := c.SandboxInspect(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			for _, p := range sb.Ports {
				host := net.JoinHostPort(p.HostIP, strconv.Itoa(int(p.HostPort)))
				fmt.Fprintf(a.Out, "%d/%s -> %s\n", p.ContainerPort, p.Proto, host)
			}
			return nil
		},
	}
}

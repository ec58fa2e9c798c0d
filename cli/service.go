package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/lb"
)

func (a *app) serviceCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "service",
		Short: "Manage services (a name and a virtual IP balanced over task sandboxes)",
		Args:  noArgs,
		RunE:  helpRunE,
	}
	cmd.AddCommand(a.serviceCreateCommand(), a.serviceLsCommand(), a.serviceInspectCommand(), a.serviceRmCommand(), a.serviceUpdateCommand())
	return cmd
}

func (a *app) serviceCreateCommand() *cobra.Command {
	var req types.ServiceCreateRequest
	cmd := &cobra.Command{
		Use:   "create [OPTIONS] NAME",
		Short: "Create a service and print its ID; add tasks with sandbox create --service NAME",
		Example: `  pier service create web --network app --port 80/tcp
  pier service create db --network app --endpoint-mode dnsrr
  pier service create api --network app --sticky 10m --stop-grace 30s
  pier service create front --network ov --publish 8080:80 --publish mode=host,published=9090,target=90
  pier sandbox create --name web1 --service web`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Name = args[0]
			for _, p := range req.Ports {
				if _, err := lb.ParsePort(p); err != nil { // fail before anything is sent
					return err
				}
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			svc, err := c.ServiceCreate(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.Out, svc.ID)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&req.Networks, "network", nil, "network of the service's VIP and tasks; repeatable (at least one)")
	fl.StringVar(&req.EndpointMode, "endpoint-mode", "vip", `"vip" (a virtual IP balanced over the tasks) or "dnsrr" (the tasks' addresses, round robin)`)
	fl.StringArrayVar(&req.Ports, "port", nil, "balance only this port on the VIP (80, 80/tcp, 53/udp); repeatable (default: every port)")
	fl.StringVar(&req.Sticky, "sticky", "", "send a client to the same task for this long after its last connection (e.g. 10m)")
	fl.StringVar(&req.StopGrace, "stop-grace", "", "how long a removed task may finish its connections (default 10s)")
	fl.StringArrayVarP(&req.Publish, "publish", "p", nil, "publish a port: 8080:80[/udp] (ranges too) on every node through the routing mesh, "+
		"or mode=host,published=8080,target=80[,protocol=udp] on the nodes of its tasks; repeatable")
	fl.BoolVar(&req.IngressSNAT, "ingress-snat", false, "masquerade routing-mesh connections (Docker's behaviour: the task sees the forwarding node, not the client)")
	return cmd
}

func (a *app) serviceLsCommand() *cobra.Command {
	var f listFlags
	cmd := &cobra.Command{
		Use:     "ls [OPTIONS]",
		Aliases: []string{"list"},
		Short:   "List services",
		Args:    noArgs,
		RunE:    func(cmd *cobra.Command, _ []string) error { return a.serviceLs(cmd.Context(), f) },
	}
	f.register(cmd.Flags(), "service", "ID, Name, Mode, VIPs, Ports, Tasks")
	return cmd
}

// serviceRow holds the fields `service ls --format` templates see.
type serviceRow struct{ ID, Name, Mode, VIPs, Ports, Tasks string }

var serviceHeader = serviceRow{ID: "SERVICE ID", Name: "NAME", Mode: "MODE", VIPs: "VIRTUAL IPS", Ports: "PORTS", Tasks: "TASKS"}

func (a *app) serviceLs(ctx context.Context, f listFlags) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	svcs, err := c.ServiceList(ctx)
	if err != nil {
		return err
	}
	rows := make([]serviceRow, len(svcs))
	for i, s := range svcs {
		var vips []string
		for _, v := range s.VirtualIPs {
			if v.Addr != "" {
				vips = append(vips, v.Network+"="+v.Addr)
			} else {
				vips = append(vips, v.Network)
			}
		}
		serving := 0
		for _, t := range s.Tasks {
			if !t.Starting && !t.Draining {
				serving++
			}
		}
		ports := strings.Join(s.Ports, ",")
		if ports == "" && s.EndpointMode == "vip" {
			ports = "*"
		}
		for _, p := range s.Publish {
			ports += "," + publishedView(p)
		}
		rows[i] = serviceRow{ID: shortID(s.ID, f.noTrunc), Name: s.Name, Mode: s.EndpointMode, VIPs: strings.Join(vips, ","),
			Ports: ports, Tasks: fmt.Sprintf("%d/%d", serving, len(s.Tasks))}
	}
	return renderList(a.Out, f.effectiveFormat(), "table {{.ID}}\t{{.Name}}\t{{.Mode}}\t{{.VIPs}}\t{{.Ports}}\t{{.Tasks}}", serviceHeader, rows)
}

func (a *app) serviceInspectCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "inspect [OPTIONS] SERVICE [SERVICE...]",
		Short: "Display detailed information on one or more services",
		Example: `  pier service inspect web
  pier service inspect -f '{{range .VirtualIPs}}{{.Network}} {{.Addr}}{{println}}{{end}}' web`,
		Args: minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return inspectAll(cmd.Context(), a.Streams, format, args, c.ServiceInspect)
		},
	}
	addInspectFormat(cmd, &format)
	return cmd
}

func (a *app) serviceRmCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "rm SERVICE [SERVICE...]",
		Aliases: []string{"remove"},
		Short:   "Remove one or more services (their tasks must be removed first)",
		Args:    minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return removeEach(a.Streams, args, func(ref string) error { return c.ServiceRemove(cmd.Context(), ref) })
		},
	}
}

// publishedView renders a published port as Docker's service ls does
// (*:8080->80/tcp), with "(host)" for host mode.
func publishedView(long string) string {
	f := map[string]string{}
	for kv := range strings.SplitSeq(long, ",") {
		k, v, _ := strings.Cut(kv, "=")
		f[k] = v
	}
	s := fmt.Sprintf("*:%s->%s/%s", f["published"], f["target"], f["protocol"])
	if f["mode"] == "host" {
		s += "(host)"
	}
	return s
}

func (a *app) serviceUpdateCommand() *cobra.Command {
	var req types.ServiceUpdateRequest
	var snat bool
	cmd := &cobra.Command{
		Use:   "update [OPTIONS] SERVICE",
		Short: "Change a service's published ports and print its name",
		Example: `  pier service update web --publish-add 8080:80
  pier service update web --publish-rm 8080:80 --publish-add mode=host,published=9090,target=80`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("ingress-snat") {
				req.IngressSNAT = &snat
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			svc, err := c.ServiceUpdate(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.Out, svc.Name)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&req.PublishAdd, "publish-add", nil, "publish a port (--publish syntax); repeatable")
	fl.StringArrayVar(&req.PublishRm, "publish-rm", nil, "stop publishing a port, by published port and protocol (8080, 8080:80/udp); repeatable")
	fl.BoolVar(&snat, "ingress-snat", false, "masquerade routing-mesh connections (--ingress-snat=false: keep the client's address)")
	return cmd
}

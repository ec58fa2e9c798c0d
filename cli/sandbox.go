package cli

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/client"
	"github.com/piernet/pier/portmap"
)

func (a *app) sandboxCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Manage sandboxes (network namespaces with their own hosts, resolv.conf and hostname)",
		Args:  noArgs,
		RunE:  helpRunE,
	}
	cmd.AddCommand(a.sandboxCreateCommand(), a.sandboxLsCommand(), a.sandboxInspectCommand(), a.sandboxRmCommand())
	return cmd
}

// sandboxFlags are the flags that describe a new sandbox (`sandbox create`, `run`).
type sandboxFlags struct {
	name, hostname                 string
	networks                       []string
	ip, ip6                        string
	aliases                        []string
	links                          []string
	dns, dnsSearch, dnsOpts, hosts []string
	publish                        []string
	service                        string
}

func (f *sandboxFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&f.name, "name", "", "sandbox name (default: a random name)")
	fl.StringVarP(&f.hostname, "hostname", "h", "", "sandbox hostname (default: the short sandbox ID)")
	fl.Bool("help", false, "help (-h is --hostname, as in docker run)")
	fl.StringArrayVar(&f.networks, "network", nil, `connect to a network, in order; "host" and "none" as in docker (default "bridge"); repeatable`)
	fl.StringVar(&f.ip, "ip", "", "IPv4 address on the first --network (e.g. 172.30.100.104)")
	fl.StringVar(&f.ip6, "ip6", "", "IPv6 address on the first --network (e.g. 2001:db8::33)")
	fl.StringArrayVar(&f.aliases, "alias", nil, "network-scoped alias on the first --network; repeatable")
	fl.StringArrayVar(&f.links, "link", nil, "link to another sandbox on the first --network (sandbox[:alias]); repeatable")
	fl.StringArrayVar(&f.dns, "dns", nil, "set custom DNS servers; repeatable")
	fl.StringArrayVar(&f.dnsSearch, "dns-search", nil, "set custom DNS search domains; repeatable")
	fl.StringArrayVar(&f.dnsOpts, "dns-option", nil, "set DNS options (resolv.conf options); repeatable")
	fl.StringArrayVar(&f.hosts, "add-host", nil, "add a custom host-to-IP mapping (host:ip); repeatable")
	fl.StringArrayVarP(&f.publish, "publish", "p", nil, "publish ports: [hostIP:][hostPort[-end]:]containerPort[-end][/tcp|udp|sctp]; repeatable")
	fl.StringVar(&f.service, "service", "", "make the sandbox a task of this service: it joins the service's networks and serves its name")
	fl.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if name == "net" { // docker's old spelling
			name = "network"
		}
		return pflag.NormalizedName(name)
	})
}

// request builds the create request; --ip, --ip6 and --alias go to the first network.
func (f sandboxFlags) request() (types.SandboxCreateRequest, error) {
	req := types.SandboxCreateRequest{Name: f.name, Hostname: f.hostname, DNS: f.dns,
		DNSSearch: f.dnsSearch, DNSOptions: f.dnsOpts, ExtraHosts: f.hosts, Ports: f.publish, Service: f.service}
	for _, p := range f.publish {
		if _, err := portmap.ParseSpec(p); err != nil { // fail before anything is sent
			return req, err
		}
	}
	for _, n := range f.networks {
		req.Networks = append(req.Networks, types.SandboxNetwork{Network: n})
	}
	ip, err := parseIPFlag("ip", f.ip, false)
	if err != nil {
		return req, err
	}
	ip6, err := parseIPFlag("ip6", f.ip6, true)
	if err != nil {
		return req, err
	}
	if !ip.IsValid() && !ip6.IsValid() && len(f.aliases) == 0 && len(f.links) == 0 {
		return req, nil
	}
	if len(req.Networks) == 0 {
		if ip.IsValid() || ip6.IsValid() || len(f.aliases) > 0 {
			return req, errNoNetwork
		}
		// Links alone: the default bridge, as docker run --link does.
		req.Networks = []types.SandboxNetwork{{Network: "bridge"}}
	}
	first := &req.Networks[0]
	first.IPv4Address, first.IPv6Address, first.Aliases, first.Links = addrString(ip), addrString(ip6), f.aliases, f.links
	return req, nil
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// sandbox create

func (a *app) sandboxCreateCommand() *cobra.Command {
	var f sandboxFlags
	cmd := &cobra.Command{
		Use:   "create [OPTIONS]",
		Short: "Create a sandbox and print its ID",
		Example: `  pier sandbox create --name web --network app --ip 10.89.0.10 --alias www
  pier sandbox create --name db --network app --network backend --dns 10.0.0.53 --add-host gw:10.0.0.1`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sb, err := a.createSandbox(cmd.Context(), f)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.Out, sb.ID)
			return nil
		},
	}
	f.register(cmd.Flags())
	return cmd
}

// createSandbox creates a sandbox from flags; without --name it picks a random name
// (and another one if that is taken).
func (a *app) createSandbox(ctx context.Context, f sandboxFlags) (types.SandboxInfo, error) {
	req, err := f.request()
	if err != nil {
		return types.SandboxInfo{}, err
	}
	c, err := a.client()
	if err != nil {
		return types.SandboxInfo{}, err
	}
	for attempt := 0; ; attempt++ {
		if f.name == "" {
			req.Name = randomName(attempt)
		}
		sb, err := c.SandboxCreate(ctx, req)
		if f.name != "" || !client.IsConflict(err) || attempt == 4 {
			return sb, err
		}
	}
}

// sandbox ls

func (a *app) sandboxLsCommand() *cobra.Command {
	var f listFlags
	cmd := &cobra.Command{
		Use:     "ls [OPTIONS]",
		Aliases: []string{"list"},
		Short:   "List sandboxes",
		Example: `  pier sandbox ls
  pier sandbox ls --format '{{.Name}} {{.Addresses}}'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.sandboxLs(cmd.Context(), f) },
	}
	f.register(cmd.Flags(), "sandbox", "ID, Name, Hostname, Networks, Addresses, Key, CreatedAt")
	return cmd
}

func (a *app) sandboxLs(ctx context.Context, f listFlags) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	sbs, err := c.SandboxList(ctx)
	if err != nil {
		return err
	}
	slices.SortFunc(sbs, func(x, y types.SandboxInfo) int { return strings.Compare(x.Name, y.Name) })
	rows := make([]sandboxRow, len(sbs))
	for i, sb := range sbs {
		rows[i] = newSandboxRow(sb, f.noTrunc)
	}
	return renderList(a.Out, f.effectiveFormat(), "table {{.ID}}\t{{.Name}}\t{{.Networks}}\t{{.Addresses}}", sandboxHeader, rows)
}

// sandboxRow holds the fields `sandbox ls --format` templates see.
type sandboxRow struct {
	ID, Name, Hostname, Networks, Addresses, Key, CreatedAt string
}

var sandboxHeader = sandboxRow{ID: "SANDBOX ID", Name: "NAME", Hostname: "HOSTNAME", Networks: "NETWORKS",
	Addresses: "ADDRESSES", Key: "KEY", CreatedAt: "CREATED AT"}

func newSandboxRow(sb types.SandboxInfo, noTrunc bool) sandboxRow {
	var nets, addrs []string
	for _, ep := range sb.Endpoints {
		nets = append(nets, ep.Network)
		for _, cidr := range []string{ep.IPv4Address, ep.IPv6Address} {
			if addr, _, _ := strings.Cut(cidr, "/"); addr != "" {
				addrs = append(addrs, addr)
			}
		}
	}
	return sandboxRow{ID: shortID(sb.ID, noTrunc), Name: sb.Name, Hostname: sb.Hostname,
		Networks: strings.Join(nets, ","), Addresses: strings.Join(addrs, ","), Key: sb.Key,
		CreatedAt: sb.Created.String()}
}

// sandbox inspect

func (a *app) sandboxInspectCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "inspect [OPTIONS] SANDBOX [SANDBOX...]",
		Short: "Display detailed information on one or more sandboxes",
		Example: `  pier sandbox inspect web
  pier sandbox inspect -f '{{.Key}}' web
  pier sandbox inspect -f '{{range .Endpoints}}{{.Network}} {{.IPv4Address}}{{println}}{{end}}' web`,
		Args:              minArgs(1),
		ValidArgsFunction: a.completeSandboxes,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return inspectAll(cmd.Context(), a.Streams, format, args, c.SandboxInspect)
		},
	}
	addInspectFormat(cmd, &format)
	return cmd
}

// sandbox rm

func (a *app) sandboxRmCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:               "rm [OPTIONS] SANDBOX [SANDBOX...]",
		Aliases:           []string{"remove"},
		Short:             "Remove one or more sandboxes",
		Args:              minArgs(1),
		ValidArgsFunction: a.completeSandboxes,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			opts := client.SandboxRemoveOptions{Force: force}
			return removeEach(a.Streams, args, func(ref string) error { return c.SandboxRemove(cmd.Context(), ref, opts) })
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "disconnect the sandbox from its networks first")
	return cmd
}

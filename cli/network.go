package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/moby/api/types/network"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/piernet/pier/client"
)

func (a *app) networkCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "network",
		Short: "Manage networks (as docker network)",
		Args:  noArgs,
		RunE:  helpRunE,
	}
	cmd.AddCommand(a.networkCreateCommand(), a.networkLsCommand(), a.networkInspectCommand(),
		a.networkRmCommand(), a.networkPruneCommand(), a.networkConnectCommand(), a.networkDisconnectCommand())
	return cmd
}

// helpRunE shows the help of a command group called without a subcommand.
func helpRunE(cmd *cobra.Command, _ []string) error { return cmd.Help() }

// network ls

type networkLsFlags struct {
	listFlags
	filters []string
}

// listFlags are the output flags of ls commands.
type listFlags struct {
	quiet, noTrunc bool
	format         string
}

func (f *listFlags) register(fl *pflag.FlagSet, what, fields string) {
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "only display "+what+" IDs")
	fl.BoolVar(&f.noTrunc, "no-trunc", false, "do not truncate IDs")
	fl.StringVar(&f.format, "format", "", fmt.Sprintf(
		"format output: \"table\" TEMPLATE, \"json\", or a Go template over each %s's fields (%s)", what, fields))
}

// effectiveFormat is the template to render: -q wins over --format.
func (f listFlags) effectiveFormat() string {
	if f.quiet {
		return "{{.ID}}"
	}
	return f.format
}

// addInspectFormat adds inspect's -f/--format flag.
func addInspectFormat(cmd *cobra.Command, format *string) {
	cmd.Flags().StringVarP(format, "format", "f", "", "format output: \"json\" or a Go template over the inspect object")
}

func (a *app) networkLsCommand() *cobra.Command {
	var f networkLsFlags
	cmd := &cobra.Command{
		Use:     "ls [OPTIONS]",
		Aliases: []string{"list"},
		Short:   "List networks",
		Example: `  pier network ls
  pier network ls -f driver=bridge -f name=app
  pier network ls --format '{{.Name}}: {{.Driver}} {{.Labels}}'
  pier network ls --format json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.networkLs(cmd.Context(), f) },
	}
	f.register(cmd.Flags(), "network", "ID, Name, Driver, Scope, IPv4, IPv6, Internal, Labels, Label NAME, CreatedAt")
	cmd.Flags().StringArrayVarP(&f.filters, "filter", "f", nil, "filter output by term=value (name, id, driver, label, scope, type, dangling); repeatable")
	return cmd
}

func (a *app) networkLs(ctx context.Context, f networkLsFlags) error {
	filters, err := parseFilters(f.filters)
	if err != nil {
		return err
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	nets, err := c.NetworkList(ctx, filters)
	if err != nil {
		return err
	}
	slices.SortFunc(nets, func(x, y network.Summary) int { return strings.Compare(x.Name, y.Name) })
	rows := make([]networkRow, len(nets))
	for i, n := range nets {
		rows[i] = newNetworkRow(n.Network, f.noTrunc)
	}
	return renderList(a.Out, f.effectiveFormat(), "table {{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}", networkHeader, rows)
}

// parseFilters parses repeated --filter term=value flags.
func parseFilters(vals []string) (client.Filters, error) {
	f := client.Filters{}
	for _, v := range vals {
		term, value, err := client.ParseFilter(v)
		if err != nil {
			return nil, err
		}
		f.Add(term, value)
	}
	return f, nil
}

// networkRow holds the fields `network ls --format` templates see (docker's).
type networkRow struct {
	ID, Name, Driver, Scope, IPv4, IPv6, Internal, Labels, CreatedAt string

	labels map[string]string
	header bool
}

var networkHeader = networkRow{ID: "NETWORK ID", Name: "NAME", Driver: "DRIVER", Scope: "SCOPE",
	IPv4: "IPV4", IPv6: "IPV6", Internal: "INTERNAL", Labels: "LABELS", CreatedAt: "CREATED AT", header: true}

func newNetworkRow(n network.Network, noTrunc bool) networkRow {
	return networkRow{ID: shortID(n.ID, noTrunc), Name: n.Name, Driver: n.Driver, Scope: n.Scope,
		IPv4: strconv.FormatBool(n.EnableIPv4), IPv6: strconv.FormatBool(n.EnableIPv6),
		Internal: strconv.FormatBool(n.Internal), Labels: joinLabels(n.Labels),
		CreatedAt: n.Created.String(), labels: n.Labels}
}

// Label returns the value of one label ({{.Label "com.example.x"}}).
func (r networkRow) Label(name string) string {
	if r.header {
		return "LABEL"
	}
	return r.labels[name]
}

// joinLabels renders labels as docker does: k=v pairs, sorted, comma-separated.
func joinLabels(labels map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}

// network inspect

func (a *app) networkInspectCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "inspect [OPTIONS] NETWORK [NETWORK...]",
		Short: "Display detailed information on one or more networks",
		Example: `  pier network inspect app
  pier network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' app
  pier network inspect -f '{{json .Containers}}' app`,
		Args:              minArgs(1),
		ValidArgsFunction: a.completeNetworks,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.networkInspect(cmd.Context(), format, args)
		},
	}
	addInspectFormat(cmd, &format)
	return cmd
}

func (a *app) networkInspect(ctx context.Context, format string, refs []string) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	return inspectAll(ctx, a.Streams, format, refs, c.NetworkInspect)
}

// inspectAll inspects refs, prints what was found, then reports each failure on
// stderr; like docker, it fails if any ref failed.
func inspectAll[T any](ctx context.Context, s Streams, format string, refs []string,
	get func(context.Context, string) (T, error)) error {
	found := []T{}
	var errs []error
	for _, ref := range refs {
		obj, err := get(ctx, ref)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		found = append(found, obj)
	}
	if err := renderInspect(s.Out, format, found); err != nil { // "[]" when none, as docker
		return err
	}
	return reportEach(s.Err, errs)
}

// reportEach prints every error and returns exit status 1 if there were any.
func reportEach(w io.Writer, errs []error) error {
	for _, err := range errs {
		reportError(w, err)
	}
	if len(errs) > 0 {
		return exitStatus(exitFailure)
	}
	return nil
}

// network rm

func (a *app) networkRmCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "rm NETWORK [NETWORK...]",
		Aliases:           []string{"remove"},
		Short:             "Remove one or more networks",
		Args:              minArgs(1),
		ValidArgsFunction: a.completeNetworks,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return removeEach(a.Streams, args, func(ref string) error { return c.NetworkRemove(cmd.Context(), ref) })
		},
	}
}

// removeEach removes every ref, printing the removed ones on stdout and each failure
// on stderr; it fails if any removal failed.
func removeEach(s Streams, refs []string, remove func(string) error) error {
	var errs []error
	for _, ref := range refs {
		if err := remove(ref); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintln(s.Out, ref)
	}
	return reportEach(s.Err, errs)
}

// network prune

func (a *app) networkPruneCommand() *cobra.Command {
	var force bool
	var filters []string
	cmd := &cobra.Command{
		Use:   "prune [OPTIONS]",
		Short: "Remove all unused networks",
		Example: `  pier network prune -f
  pier network prune --filter until=24h --filter label=env=test`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.networkPrune(cmd.Context(), force, filters)
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "do not prompt for confirmation")
	cmd.Flags().StringArrayVar(&filters, "filter", nil, "provide filter values (until=DURATION|TIME, label=k[=v], label!=k[=v])")
	return cmd
}

const pruneWarning = `WARNING! This will remove all custom networks not used by at least one sandbox.
Are you sure you want to continue? [y/N] `

func (a *app) networkPrune(ctx context.Context, force bool, filterFlags []string) error {
	filters, err := parseFilters(filterFlags)
	if err != nil {
		return err
	}
	if !force {
		ok, err := confirm(ctx, a.In, a.Out, pruneWarning)
		if err != nil || !ok {
			return err
		}
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	report, err := c.NetworksPrune(ctx, filters)
	if err != nil {
		return err
	}
	if len(report.NetworksDeleted) > 0 {
		fmt.Fprintf(a.Out, "Deleted Networks:\n%s\n", strings.Join(report.NetworksDeleted, "\n"))
	}
	return nil
}

// confirm asks a y/N question on in; anything but y/yes is no. It gives up when ctx
// ends (Ctrl-C).
func confirm(ctx context.Context, in io.Reader, out io.Writer, question string) (bool, error) {
	fmt.Fprint(out, question)
	answer := make(chan string, 1)
	go func() { // ends when in yields a line or EOF
		line, _ := bufio.NewReader(in).ReadString('\n')
		answer <- line
	}()
	select {
	case line := <-answer:
		line = strings.ToLower(strings.TrimSpace(line))
		return line == "y" || line == "yes", nil
	case <-ctx.Done():
		fmt.Fprintln(out)
		return false, ctx.Err()
	}
}

// network connect / disconnect

type connectFlags struct {
	ip, ip6 string
	aliases []string
	links   []string
}

func (a *app) networkConnectCommand() *cobra.Command {
	var f connectFlags
	cmd := &cobra.Command{
		Use:               "connect [OPTIONS] NETWORK SANDBOX",
		Short:             "Connect a sandbox to a network",
		Example:           `  pier network connect --ip 10.89.0.10 --alias db app web`,
		Args:              exactArgs(2),
		ValidArgsFunction: a.completeNetworkThenSandbox,
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := f.request(args[1])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.NetworkConnect(cmd.Context(), args[0], req)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.ip, "ip", "", "IPv4 address (e.g. 172.30.100.104)")
	fl.StringVar(&f.ip6, "ip6", "", "IPv6 address (e.g. 2001:db8::33)")
	fl.StringArrayVar(&f.aliases, "alias", nil, "add a network-scoped alias for the sandbox; repeatable")
	fl.StringArrayVar(&f.links, "link", nil, "add a link to another sandbox (sandbox[:alias]); repeatable")
	return cmd
}

func (f connectFlags) request(sandbox string) (network.ConnectRequest, error) {
	ip, err := parseIPFlag("ip", f.ip, false)
	if err != nil {
		return network.ConnectRequest{}, err
	}
	ip6, err := parseIPFlag("ip6", f.ip6, true)
	if err != nil {
		return network.ConnectRequest{}, err
	}
	es := &network.EndpointSettings{Aliases: f.aliases, Links: f.links}
	if ip.IsValid() || ip6.IsValid() {
		es.IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: ip, IPv6Address: ip6}
	}
	return network.ConnectRequest{Container: sandbox, EndpointConfig: es}, nil
}

// parseIPFlag parses an --ip (v6=false) or --ip6 value; "" is no address.
func parseIPFlag(flag, s string, v6 bool) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := parseAddrFlag(flag, s)
	switch {
	case err != nil:
		return a, err
	case v6 && !a.Is6():
		return a, fmt.Errorf("invalid --%s %q: not an IPv6 address", flag, s)
	case !v6 && !a.Is4():
		return a, fmt.Errorf("invalid --%s %q: not an IPv4 address (use --ip6)", flag, s)
	}
	return a, nil
}

func (a *app) networkDisconnectCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:               "disconnect [OPTIONS] NETWORK SANDBOX",
		Short:             "Disconnect a sandbox from a network",
		Args:              exactArgs(2),
		ValidArgsFunction: a.completeNetworkThenSandbox,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return c.NetworkDisconnect(cmd.Context(), args[0], network.DisconnectRequest{Container: args[1], Force: force})
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "force the sandbox to disconnect from the network")
	return cmd
}

// Shell completion of names.

func (a *app) completeNetworks(cmd *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return a.completeNames(cmd, func(ctx context.Context, c *client.Client) ([]string, error) {
		nets, err := c.NetworkList(ctx, nil)
		var names []string
		for _, n := range nets {
			names = append(names, n.Name)
		}
		return names, err
	})
}

func (a *app) completeSandboxes(cmd *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return a.completeNames(cmd, func(ctx context.Context, c *client.Client) ([]string, error) {
		sbs, err := c.SandboxList(ctx)
		var names []string
		for _, sb := range sbs {
			names = append(names, sb.Name)
		}
		return names, err
	})
}

// completeNames offers the names list returns as completions.
func (a *app) completeNames(cmd *cobra.Command, list func(context.Context, *client.Client) ([]string, error)) ([]cobra.Completion, cobra.ShellCompDirective) {
	c, err := a.client()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	names, err := list(cmd.Context(), c)
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

func (a *app) completeNetworkThenSandbox(cmd *cobra.Command, args []string, s string) ([]cobra.Completion, cobra.ShellCompDirective) {
	switch len(args) {
	case 0:
		return a.completeNetworks(cmd, args, s)
	case 1:
		return a.completeSandboxes(cmd, args, s)
	}
	return nil, cobra.ShellCompDirectiveNoFileComp
}

// errNoNetwork is returned when sandbox-only flags are given without --network.
var errNoNetwork = errors.New("--ip, --ip6 and --alias apply to the first --network: add --network NAME")

package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/piernet/pier/api/types"
)

func (a *app) nodeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Show the nodes of pierd's cluster",
		Args:  noArgs,
		RunE:  helpRunE,
	}
	cmd.AddCommand(a.nodeLsCommand(), a.nodeInspectCommand(), a.nodeRotateKeyCommand())
	return cmd
}

func (a *app) nodeRotateKeyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "rotate-key",
		Short: "Replace this node's WireGuard key pair (encrypted overlays) and wait until every node uses it",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			r, err := c.NodeRotateKey(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(a.Out, "generation %d, public key %s, in use with every node in %s\n", r.Generation, r.PublicKey, r.Took)
			if len(r.Missing) > 0 {
				fmt.Fprintf(a.Out, "not acknowledged in time by: %s\n", strings.Join(r.Missing, ", "))
			}
			if len(r.NoSession) > 0 {
				fmt.Fprintf(a.Out, "no session under the new key in time with: %s\n", strings.Join(r.NoSession, ", "))
			}
			return nil
		},
	}
}

func (a *app) nodeLsCommand() *cobra.Command {
	var f listFlags
	cmd := &cobra.Command{
		Use:     "ls [OPTIONS]",
		Aliases: []string{"list"},
		Short:   "List the cluster's nodes",
		Example: `  pier node ls
  pier node ls --format '{{.Name}} {{.State}}'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return a.nodeLs(cmd.Context(), f) },
	}
	f.register(cmd.Flags(), "node", "ID, Name, Address, State, Endpoints, Etcd, Version, Capabilities")
	return cmd
}

func (a *app) nodeLs(ctx context.Context, f listFlags) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	nodes, err := c.NodeList(ctx)
	if err != nil {
		return err
	}
	slices.SortFunc(nodes, func(x, y types.NodeInfo) int { return strings.Compare(x.Name, y.Name) })
	rows := make([]nodeRow, len(nodes))
	for i, n := range nodes {
		rows[i] = newNodeRow(n, f.noTrunc)
	}
	return renderList(a.Out, f.effectiveFormat(),
		"table {{.ID}}\t{{.Name}}\t{{.Address}}\t{{.State}}\t{{.Endpoints}}\t{{.Etcd}}\t{{.Capabilities}}", nodeHeader, rows)
}

// nodeRow holds the fields `node ls --format` templates see.
type nodeRow struct {
	ID, Name, Address, State, Endpoints, Etcd, Version, Capabilities string
}

var nodeHeader = nodeRow{ID: "NODE ID", Name: "NAME", Address: "ADDRESS", State: "STATE", Endpoints: "ENDPOINTS",
	Etcd: "ETCD", Version: "VERSION", Capabilities: "CAPABILITIES"}

func newNodeRow(n types.NodeInfo, noTrunc bool) nodeRow {
	id := n.ID
	if !noTrunc && len(id) > 12 {
		id = id[:12]
	}
	name := n.Name
	if n.Self {
		name += " *"
	}
	etcd := "-"
	if n.EtcdMember {
		etcd = "member"
	}
	var caps []string
	for k, v := range n.Capabilities {
		caps = append(caps, k+"="+v)
	}
	slices.Sort(caps)
	return nodeRow{ID: id, Name: name, Address: n.Address, State: n.State, Endpoints: fmt.Sprint(n.Endpoints),
		Etcd: etcd, Version: n.Version, Capabilities: strings.Join(caps, ",")}
}

func (a *app) nodeInspectCommand() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "inspect [OPTIONS] NODE [NODE...]",
		Short: "Display detailed information on one or more nodes",
		Args:  minArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			return inspectAll(cmd.Context(), a.Streams, format, args, c.NodeInspect)
		},
	}
	addInspectFormat(cmd, &format)
	return cmd
}

func (a *app) clusterCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Show pierd's cluster settings",
		Args:  noArgs,
		RunE:  helpRunE,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "token",
		Short: "Print the token other pierds join this cluster with (pierd --cluster-join … --cluster-token TOKEN)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			info, err := c.ClusterInfo(cmd.Context())
			if err != nil {
				return err
			}
			if info.Token == "" {
				return fmt.Errorf("node %s holds no embedded etcd member and has no join token: ask a node started with --cluster-init", info.NodeName)
			}
			_, err = fmt.Fprintln(a.Out, info.Token)
			return err
		},
	})
	return cmd
}

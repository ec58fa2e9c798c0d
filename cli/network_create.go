package cli

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/moby/moby/api/types/network"
	"github.com/spf13/cobra"
)

// networkCreateFlags are docker's `network create` flags.
type networkCreateFlags struct {
	driver               string
	internal, attachable bool
	ipv6                 bool
	ipv6Set              bool // --ipv6 was given (true or false)
	ipv4                 bool // --ipv4=false: an IPv6-only network
	opts, labels         []string
	ipam                 ipamFlags
}

// ipamFlags are the IPAM part of `network create`. Subnets, ranges, gateways and
// auxiliary addresses are repeatable; each range, gateway and aux address goes to
// the subnet that contains it, as in docker.
type ipamFlags struct {
	driver                      string
	subnets, ipRanges, gateways []string
	aux                         []string // name=ip
	opts                        []string
}

func (a *app) networkCreateCommand() *cobra.Command {
	var f networkCreateFlags
	cmd := &cobra.Command{
		Use:   "create [OPTIONS] NETWORK",
		Short: "Create a network",
		Example: `  pier network create app
  pier network create --subnet 10.89.0.0/24 --gateway 10.89.0.1 --ip-range 10.89.0.128/25 app
  pier network create --ipv6 --subnet 10.90.0.0/24 --subnet fd00:90::/64 dual
  pier network create --internal -o com.docker.network.bridge.name=br-app --label env=dev app`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f.ipv6Set = cmd.Flags().Changed("ipv6")
			return a.networkCreate(cmd.Context(), args[0], f)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.driver, "driver", "d", "bridge", "driver to manage the network (bridge, host, null)")
	fl.BoolVar(&f.internal, "internal", false, "restrict external access to the network")
	fl.BoolVar(&f.attachable, "attachable", false, "enable manual sandbox attachment (accepted for docker compatibility)")
	fl.BoolVar(&f.ipv6, "ipv6", false, "enable IPv6 networking")
	fl.BoolVar(&f.ipv4, "ipv4", true, "enable IPv4 networking (--ipv4=false with --ipv6: an IPv6-only network)")
	fl.StringArrayVarP(&f.opts, "opt", "o", nil, "set driver specific options (key=value); repeatable")
	fl.StringArrayVar(&f.labels, "label", nil, "set metadata on the network (key=value); repeatable")
	fl.StringVar(&f.ipam.driver, "ipam-driver", "default", "IP address management driver (default, null)")
	fl.StringArrayVar(&f.ipam.opts, "ipam-opt", nil, "set IPAM driver specific options (key=value); repeatable")
	fl.StringSliceVar(&f.ipam.subnets, "subnet", nil, "subnet in CIDR format that represents a network segment; repeatable")
	fl.StringSliceVar(&f.ipam.ipRanges, "ip-range", nil, "allocate sandbox addresses from a sub-range of a subnet; repeatable")
	fl.StringSliceVar(&f.ipam.gateways, "gateway", nil, "IPv4 or IPv6 gateway for a subnet; repeatable")
	fl.StringArrayVar(&f.ipam.aux, "aux-address", nil, "auxiliary address used by the network driver (name=ip); repeatable")
	return cmd
}

func (a *app) networkCreate(ctx context.Context, name string, f networkCreateFlags) error {
	req, err := f.request(name)
	if err != nil {
		return err
	}
	c, err := a.client()
	if err != nil {
		return err
	}
	resp, err := c.NetworkCreate(ctx, req)
	if err != nil {
		return err
	}
	if resp.Warning != "" {
		fmt.Fprintf(a.Err, "WARNING: %s\n", resp.Warning)
	}
	fmt.Fprintln(a.Out, resp.ID)
	return nil
}

// request builds the create request for the network name.
func (f networkCreateFlags) request(name string) (network.CreateRequest, error) {
	opts, err := parseKeyValues("opt", f.opts)
	if err != nil {
		return network.CreateRequest{}, err
	}
	labels, err := parseKeyValues("label", f.labels)
	if err != nil {
		return network.CreateRequest{}, err
	}
	ipam, err := f.ipam.build()
	if err != nil {
		return network.CreateRequest{}, err
	}
	req := network.CreateRequest{Name: name, Driver: f.driver, Internal: f.internal,
		Attachable: f.attachable, Options: opts, Labels: labels, IPAM: ipam}
	if f.ipv6Set {
		req.EnableIPv6 = &f.ipv6
	}
	if !f.ipv4 {
		req.EnableIPv4 = &f.ipv4
	}
	return req, nil
}

// build returns the IPAM part of the request.
func (f ipamFlags) build() (*network.IPAM, error) {
	opts, err := parseKeyValues("ipam-opt", f.opts)
	if err != nil {
		return nil, err
	}
	cfgs, err := f.configs()
	if err != nil {
		return nil, err
	}
	return &network.IPAM{Driver: f.driver, Options: opts, Config: cfgs}, nil
}

// configs returns one IPAM config per --subnet, in order, with the ranges, gateways
// and aux addresses that fall in it.
func (f ipamFlags) configs() ([]network.IPAMConfig, error) {
	if len(f.subnets) < len(f.ipRanges) || len(f.subnets) < len(f.gateways) {
		return nil, fmt.Errorf("every --ip-range or --gateway must have a corresponding --subnet")
	}
	cfgs, err := parseSubnets(f.subnets)
	if err != nil {
		return nil, err
	}
	for _, r := range f.ipRanges {
		if err := addRange(cfgs, r); err != nil {
			return nil, err
		}
	}
	for _, g := range f.gateways {
		if err := addGateway(cfgs, g); err != nil {
			return nil, err
		}
	}
	for _, aux := range f.aux {
		if err := addAux(cfgs, aux); err != nil {
			return nil, err
		}
	}
	return cfgs, nil
}

// parseSubnets parses --subnet values; subnets must not overlap.
func parseSubnets(vals []string) ([]network.IPAMConfig, error) {
	var cfgs []network.IPAMConfig
	for _, s := range vals {
		p, err := parsePrefixFlag("subnet", s)
		if err != nil {
			return nil, err
		}
		for _, c := range cfgs {
			if c.Subnet.Overlaps(p) {
				return nil, fmt.Errorf("subnets %s and %s overlap: multiple overlapping subnet configuration is not supported", c.Subnet, p)
			}
		}
		cfgs = append(cfgs, network.IPAMConfig{Subnet: p})
	}
	return cfgs, nil
}

func addRange(cfgs []network.IPAMConfig, s string) error {
	r, err := parsePrefixFlag("ip-range", s)
	if err != nil {
		return err
	}
	c := subnetFor(cfgs, r.Addr())
	switch {
	case c == nil || r.Bits() < c.Subnet.Bits():
		return fmt.Errorf("no matching subnet for range %s", s)
	case c.IPRange.IsValid():
		return fmt.Errorf("cannot configure multiple ranges (%s, %s) on the same subnet (%s)", s, c.IPRange, c.Subnet)
	}
	c.IPRange = r
	return nil
}

func addGateway(cfgs []network.IPAMConfig, s string) error {
	g, err := parseAddrFlag("gateway", s)
	if err != nil {
		return err
	}
	c := subnetFor(cfgs, g)
	switch {
	case c == nil:
		return fmt.Errorf("no matching subnet for gateway %s", s)
	case c.Gateway.IsValid():
		return fmt.Errorf("cannot configure multiple gateways (%s, %s) for the same subnet (%s)", s, c.Gateway, c.Subnet)
	}
	c.Gateway = g
	return nil
}

func addAux(cfgs []network.IPAMConfig, s string) error {
	name, addr, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return fmt.Errorf("invalid --aux-address %q: want name=ip, such as router=10.89.0.2", s)
	}
	a, err := parseAddrFlag("aux-address", addr)
	if err != nil {
		return err
	}
	c := subnetFor(cfgs, a)
	if c == nil {
		return fmt.Errorf("no matching subnet for aux-address %s", addr)
	}
	if c.AuxAddress == nil {
		c.AuxAddress = map[string]netip.Addr{}
	}
	c.AuxAddress[name] = a
	return nil
}

// subnetFor returns the config whose subnet contains a (subnets do not overlap).
func subnetFor(cfgs []network.IPAMConfig, a netip.Addr) *network.IPAMConfig {
	for i := range cfgs {
		if cfgs[i].Subnet.Contains(a) {
			return &cfgs[i]
		}
	}
	return nil
}

// parsePrefixFlag parses a CIDR flag value as given (host bits and IPv4-mapped
// forms are the server's business).
func parsePrefixFlag(flag, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return p, fmt.Errorf("invalid --%s %q: want CIDR notation such as 10.1.0.0/16 or fd00:1::/64", flag, s)
	}
	return p, nil
}

func parseAddrFlag(flag, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return a, fmt.Errorf("invalid --%s %q: want an IP address such as 10.1.0.1 or fd00:1::1", flag, s)
	}
	return a.Unmap(), nil
}

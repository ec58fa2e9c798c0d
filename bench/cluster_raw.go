package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
)

// rawVXLAN is the kernel's own tunnel: two namespaces joined by a veth "underlay"
// (203.0.113.1/.2), a VXLAN device in each (learning off, one static FDB entry to the
// peer) carrying 10.254.7.1/.2.
type rawVXLAN struct {
	a, b     string // namespace paths: a serves, b is the client
	serverIP string
}

func newRawVXLAN(ctx context.Context, mtu int) (*rawVXLAN, error) {
	if mtu == 0 {
		mtu = 1450
	}
	na, nb := clusterNSPrefix+"rawa", clusterNSPrefix+"rawb"
	for _, ns := range []string{na, nb} {
		if err := addNetns(ctx, ns); err != nil {
			return nil, err
		}
	}
	m := strconv.Itoa(mtu)
	steps := [][]string{
		{"link", "add", "bcra0", "netns", na, "type", "veth", "peer", "name", "bcrb0", "netns", nb},
		{"-n", na, "addr", "add", "203.0.113.1/30", "dev", "bcra0"},
		{"-n", nb, "addr", "add", "203.0.113.2/30", "dev", "bcrb0"},
		{"-n", na, "link", "set", "bcra0", "up"},
		{"-n", nb, "link", "set", "bcrb0", "up"},
	}
	for _, side := range []struct{ ns, local, remote, addr string }{
		{na, "203.0.113.1", "203.0.113.2", "10.254.7.1/24"},
		{nb, "203.0.113.2", "203.0.113.1", "10.254.7.2/24"},
	} {
		steps = append(steps,
			[]string{"-n", side.ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "local", side.local, "dstport", "4789", "nolearning"},
			[]string{"-n", side.ns, "link", "set", "vx0", "mtu", m, "up"},
			[]string{"-n", side.ns, "addr", "add", side.addr, "dev", "vx0"},
		)
	}
	for _, args := range steps {
		if _, err := run(ctx, "ip", args...); err != nil {
			return nil, err
		}
	}
	// Static FDB and neighbour entries both ways, as an overlay that programs
	// everything does.
	for _, side := range []struct{ ns, peerNS, remote, peerIP string }{
		{na, nb, "203.0.113.2", "10.254.7.2"}, {nb, na, "203.0.113.1", "10.254.7.1"},
	} {
		mac, err := macOf(ctx, side.peerNS, "vx0")
		if err != nil {
			return nil, err
		}
		for _, args := range [][]string{
			{"-n", side.ns, "neigh", "add", side.peerIP, "lladdr", mac, "dev", "vx0", "nud", "permanent"},
		} {
			if _, err := run(ctx, "ip", args...); err != nil {
				return nil, err
			}
		}
		if _, err := run(ctx, "bridge", "-n", side.ns, "fdb", "append", mac, "dev", "vx0", "dst", side.remote, "self", "permanent"); err != nil {
			return nil, err
		}
	}
	return &rawVXLAN{a: nsPath(na), b: nsPath(nb), serverIP: "10.254.7.1"}, nil
}

func macOf(ctx context.Context, ns, dev string) (string, error) {
	out, err := run(ctx, "ip", "-n", ns, "-br", "link", "show", "dev", dev)
	if err != nil {
		return "", err
	}
	var name, state, mac string
	if _, err := fmt.Sscan(out, &name, &state, &mac); err != nil || len(mac) != 17 {
		return "", errors.New("no MAC address of " + dev + " in " + ns + ": " + out)
	}
	return mac, nil
}

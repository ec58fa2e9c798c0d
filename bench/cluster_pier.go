package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/network"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/client"
	"github.com/piernet/pier/lab"
)

// clusterNet is the overlay network both systems' scenarios use.
const clusterNet = "bcnet"

// pierCluster is the pier side: a lab and a client per host.
type pierCluster struct {
	lab     *lab.Lab
	clients []*client.Client
	mtu     int
}

func startPierCluster(ctx context.Context, c *cluster) (*pierCluster, error) {
	l, err := lab.Up(ctx, lab.Options{Name: fmt.Sprintf("bc%d", os.Getpid()), Hosts: 3, Pierd: c.cfg.Pierd})
	if err != nil {
		return nil, err
	}
	p := &pierCluster{lab: l}
	for _, h := range l.Hosts {
		cl, err := client.New("unix://" + h.Socket)
		if err != nil {
			return p, errors.Join(err, p.close(ctx))
		}
		p.clients = append(p.clients, cl)
	}
	if _, err := p.clients[0].NetworkCreate(ctx, network.CreateRequest{Name: clusterNet, Driver: "overlay", Attachable: true}); err != nil {
		return nil, errors.Join(fmt.Errorf("creating the overlay: %w", err), p.close(ctx))
	}
	b, err := p.startBox(ctx, 2, "bc-mtu")
	if err != nil {
		return nil, errors.Join(err, p.close(ctx))
	}
	p.mtu, err = mtuOf(ctx, b, clusterNet)
	if rerr := p.removeBox(ctx, 2, b); err != nil || rerr != nil {
		return nil, errors.Join(err, rerr, p.close(ctx))
	}
	return p, nil
}

// startBox creates a sandbox on the overlay on host h (0-based).
func (p *pierCluster) startBox(ctx context.Context, h int, name string) (box, error) {
	return p.startBoxOn(ctx, h, name, clusterNet)
}

// startBoxOn creates a sandbox on network net on host h. A host that has not seen the
// network yet answers NotFound for a moment: retried for 10 s.
func (p *pierCluster) startBoxOn(ctx context.Context, h int, name, net string) (box, error) {
	return p.create(ctx, h, types.SandboxCreateRequest{Name: name, Networks: []types.SandboxNetwork{{Network: net}}}, net)
}

// create makes the sandbox req on host h and reports its address on net.
func (p *pierCluster) create(ctx context.Context, h int, req types.SandboxCreateRequest, net string) (box, error) {
	name := req.Name
	deadline := time.Now().Add(10 * time.Second)
	for {
		start := time.Now()
		info, err := p.clients[h].SandboxCreate(ctx, req)
		took := time.Since(start)
		if err == nil {
			b := box{ID: info.ID, Name: info.Name, NetNS: info.Key, Took: took, IPs: map[string]string{}}
			for _, ep := range info.Endpoints { // the overlay's, not the gateway bridge's
				b.IPs[ep.Network] = strings.Split(ep.IPv4Address, "/")[0]
			}
			if b.IPs[net] == "" {
				return b, fmt.Errorf("sandbox %s has no address on %s: %+v", name, net, info.Endpoints)
			}
			return b, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return box{}, fmt.Errorf("creating sandbox %s on h%d: %w", name, h+1, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *pierCluster) removeBox(ctx context.Context, h int, b box) error {
	return p.clients[h].SandboxRemove(ctx, b.ID, client.SandboxRemoveOptions{Force: true})
}

// hostState is h's state as host `from` lists it ("" when it is not listed).
func (p *pierCluster) hostState(ctx context.Context, from int, name string) (string, error) {
	nodes, err := p.clients[from].NodeList(ctx)
	if err != nil {
		return "", err
	}
	for _, n := range nodes {
		if n.Name == name {
			return n.State, nil
		}
	}
	return "", nil
}

// close removes the sandboxes of every live host and takes the lab down.
func (p *pierCluster) close(ctx context.Context) error {
	if p == nil || p.lab == nil {
		return nil
	}
	var errs []error
	for i, cl := range p.clients {
		list, err := cl.SandboxList(ctx)
		if err != nil {
			continue // its pierd was killed
		}
		for _, sb := range list {
			if err := cl.SandboxRemove(ctx, sb.ID, client.SandboxRemoveOptions{Force: true}); err != nil {
				errs = append(errs, fmt.Errorf("h%d: removing %s: %w", i+1, sb.Name, err))
			}
		}
	}
	errs = append(errs, p.lab.Down())
	p.lab = nil
	return errors.Join(errs...)
}

// mtuOf is the MTU of the box's interface carrying its address on net.
func mtuOf(ctx context.Context, b box, net string) (int, error) {
	ip := b.IPs[net]
	out, err := runIn(ctx, b.NetNS, "ip", "-o", "-4", "addr", "show")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) > 3 && strings.HasPrefix(f[3], ip+"/") {
			link, err := runIn(ctx, b.NetNS, "ip", "-o", "link", "show", "dev", f[1])
			if err != nil {
				return 0, err
			}
			lf := strings.Fields(link)
			for i := range lf {
				if lf[i] == "mtu" && i+1 < len(lf) {
					return strconv.Atoi(lf[i+1])
				}
			}
		}
	}
	return 0, fmt.Errorf("no interface with %s in %s: %s", ip, b.NetNS, out)
}

package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	dclient "github.com/moby/moby/client"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/client"
)

// box is a running sandbox (pier) or container (Docker).
type box struct {
	ID, Name string
	NetNS    string            // path of its network namespace
	IPs      map[string]string // network name → IPv4 address (no prefix)
	Dir      string            // pier: directory of its /etc files
	Resolv   string            // path of its resolv.conf on the machine
	Took     time.Duration     // the API calls that created and started it
}

// boxSpec describes a box to start.
type boxSpec struct {
	Name    string
	Network string   // "" = the default bridge network
	Ports   int      // TCP ports to publish: host 20000+i → box 10000+i
	DNS     []string // nameservers (upstreams of the embedded DNS)
}

// system is one of the two daemons under test, driven through its API.
type system interface {
	Name() string
	CreateNetwork(ctx context.Context, name string) (string, error)
	RemoveNetwork(ctx context.Context, id string) error
	StartBox(ctx context.Context, spec boxSpec) (box, error)
	RemoveBox(ctx context.Context, b box) error
	Connect(ctx context.Context, netID string, b box) error
	Disconnect(ctx context.Context, netID string, b box) error
	// Netns is the daemon's own namespace (its "host"), DaemonPID its process.
	Netns() string
	DaemonPID() int
}

// errPending marks a feature pier does not have yet.
var errPending = errors.New("pending")

// hostPort and boxPort number the i-th published port.
func hostPort(i int) int { return 20000 + i }
func boxPort(i int) int  { return 10000 + i }

// ---- pier ----

type pierSys struct {
	c   *client.Client
	d   *daemon
	dir string // exec root, to find sandbox files
}

func (p *pierSys) Name() string   { return "pier" }
func (p *pierSys) Netns() string  { return nsPath(nsPier) }
func (p *pierSys) DaemonPID() int { return p.d.pid() }

func (p *pierSys) CreateNetwork(ctx context.Context, name string) (string, error) {
	r, err := p.c.NetworkCreate(ctx, network.CreateRequest{Name: name, Driver: "bridge"})
	return r.ID, err
}

func (p *pierSys) RemoveNetwork(ctx context.Context, id string) error {
	return p.c.NetworkRemove(ctx, id)
}

func (p *pierSys) StartBox(ctx context.Context, spec boxSpec) (box, error) {
	req := types.SandboxCreateRequest{Name: spec.Name, DNS: spec.DNS}
	if spec.Network != "" {
		req.Networks = []types.SandboxNetwork{{Network: spec.Network}}
	}
	if spec.Ports > 0 {
		if err := setPierPorts(&req, spec.Ports); err != nil {
			return box{}, err
		}
	}
	start := time.Now()
	info, err := p.c.SandboxCreate(ctx, req)
	took := time.Since(start)
	if err != nil {
		return box{}, err
	}
	b := box{ID: info.ID, Name: info.Name, NetNS: info.Key, Dir: info.Dir, Took: took,
		Resolv: filepath.Join(info.Dir, "resolv.conf"), IPs: map[string]string{}}
	for _, ep := range info.Endpoints {
		b.IPs[ep.Network] = strings.Split(ep.IPv4Address, "/")[0]
	}
	return b, nil
}

// pierPortsField is the field of SandboxCreateRequest that publishes ports, found by
// reflection so this file compiles before and after pier's -p support lands.
const pierPortsField = "Ports"

// pierPortsAvailable says whether pier's sandbox API can publish ports, and if not why.
func pierPortsAvailable() (bool, string) {
	f, ok := reflect.TypeFor[types.SandboxCreateRequest]().FieldByName(pierPortsField)
	if !ok {
		return false, "pier's sandbox API has no " + pierPortsField + " field yet (issue 4)"
	}
	if f.Type != reflect.TypeFor[[]string]() {
		return false, fmt.Sprintf("SandboxCreateRequest.%s is %s; bench/system.go fills only []string (Docker's -p syntax): update setPierPorts", pierPortsField, f.Type)
	}
	return true, ""
}

// setPierPorts publishes n TCP ports in Docker's -p syntax, one spec per port as the
// docker CLI sends them.
func setPierPorts(req *types.SandboxCreateRequest, n int) error {
	if ok, why := pierPortsAvailable(); !ok {
		return fmt.Errorf("%w: %s", errPending, why)
	}
	specs := make([]string, n)
	for i := range specs {
		specs[i] = fmt.Sprintf("%d:%d/tcp", hostPort(i), boxPort(i))
	}
	reflect.ValueOf(req).Elem().FieldByName(pierPortsField).Set(reflect.ValueOf(specs))
	return nil
}

func (p *pierSys) RemoveBox(ctx context.Context, b box) error {
	return p.c.SandboxRemove(ctx, b.ID, client.SandboxRemoveOptions{Force: true})
}

func (p *pierSys) Connect(ctx context.Context, netID string, b box) error {
	return p.c.NetworkConnect(ctx, netID, network.ConnectRequest{Container: b.ID})
}

func (p *pierSys) Disconnect(ctx context.Context, netID string, b box) error {
	return p.c.NetworkDisconnect(ctx, netID, network.DisconnectRequest{Container: b.ID})
}

// ---- Docker ----

type dockerSys struct {
	c     *dclient.Client
	d     *daemon
	image string
}

func (s *dockerSys) Name() string   { return "Docker" }
func (s *dockerSys) Netns() string  { return nsPath(nsDocker) }
func (s *dockerSys) DaemonPID() int { return s.d.pid() }

func (s *dockerSys) CreateNetwork(ctx context.Context, name string) (string, error) {
	r, err := s.c.NetworkCreate(ctx, name, dclient.NetworkCreateOptions{Driver: "bridge"})
	return r.ID, err
}

func (s *dockerSys) RemoveNetwork(ctx context.Context, id string) error {
	_, err := s.c.NetworkRemove(ctx, id, dclient.NetworkRemoveOptions{})
	return err
}

func (s *dockerSys) StartBox(ctx context.Context, spec boxSpec) (box, error) {
	cfg := &container.Config{Image: s.image, Cmd: []string{"/bin/sleep", "3600"}}
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(cmpOr(spec.Network, "bridge"))}
	for _, d := range spec.DNS {
		a, err := netip.ParseAddr(d)
		if err != nil {
			return box{}, err
		}
		hc.DNS = append(hc.DNS, a)
	}
	if spec.Ports > 0 {
		cfg.ExposedPorts = network.PortSet{}
		hc.PortBindings = network.PortMap{}
		for i := range spec.Ports {
			port, ok := network.PortFrom(uint16(boxPort(i)), network.TCP)
			if !ok {
				return box{}, fmt.Errorf("bad port %d", boxPort(i))
			}
			cfg.ExposedPorts[port] = struct{}{}
			hc.PortBindings[port] = []network.PortBinding{{HostPort: strconv.Itoa(hostPort(i))}}
		}
	}
	start := time.Now()
	cr, err := s.c.ContainerCreate(ctx, dclient.ContainerCreateOptions{Config: cfg, HostConfig: hc, Name: spec.Name})
	if err != nil {
		return box{}, err
	}
	if _, err := s.c.ContainerStart(ctx, cr.ID, dclient.ContainerStartOptions{}); err != nil {
		_, rerr := s.c.ContainerRemove(context.WithoutCancel(ctx), cr.ID, dclient.ContainerRemoveOptions{Force: true})
		return box{}, errors.Join(err, rerr)
	}
	took := time.Since(start)
	b, err := s.inspect(ctx, cr.ID)
	b.Took = took
	return b, err
}

func (s *dockerSys) inspect(ctx context.Context, id string) (box, error) {
	r, err := s.c.ContainerInspect(ctx, id, dclient.ContainerInspectOptions{})
	if err != nil {
		return box{ID: id}, err
	}
	c := r.Container
	b := box{ID: id, Name: strings.TrimPrefix(c.Name, "/"), Resolv: c.ResolvConfPath, IPs: map[string]string{}}
	if c.State == nil || c.State.Pid == 0 {
		return b, fmt.Errorf("container %s is not running", b.Name)
	}
	b.NetNS = fmt.Sprintf("/proc/%d/ns/net", c.State.Pid)
	if c.NetworkSettings != nil {
		for name, ep := range c.NetworkSettings.Networks {
			if ep != nil && ep.IPAddress.IsValid() {
				b.IPs[name] = ep.IPAddress.String()
			}
		}
	}
	return b, nil
}

func (s *dockerSys) RemoveBox(ctx context.Context, b box) error {
	_, err := s.c.ContainerRemove(ctx, b.ID, dclient.ContainerRemoveOptions{Force: true})
	return err
}

func (s *dockerSys) Connect(ctx context.Context, netID string, b box) error {
	_, err := s.c.NetworkConnect(ctx, netID, dclient.NetworkConnectOptions{Container: b.ID})
	return err
}

func (s *dockerSys) Disconnect(ctx context.Context, netID string, b box) error {
	_, err := s.c.NetworkDisconnect(ctx, netID, dclient.NetworkDisconnectOptions{Container: b.ID})
	return err
}

// removeAll removes every container the Docker daemon has (the benchmark's own
// daemon: it holds nothing else), a few at a time.
func (s *dockerSys) removeAll(ctx context.Context) error {
	r, err := s.c.ContainerList(ctx, dclient.ContainerListOptions{All: true})
	if err != nil {
		return err
	}
	ids := make([]string, 0, len(r.Items))
	for _, c := range r.Items {
		ids = append(ids, c.ID)
	}
	return forEach(ctx, ids, 4, func(ctx context.Context, id string) error {
		_, err := s.c.ContainerRemove(ctx, id, dclient.ContainerRemoveOptions{Force: true})
		return err
	})
}

// removeAll removes every sandbox of the benchmark's pierd, a few at a time.
func (p *pierSys) removeAll(ctx context.Context) error {
	list, err := p.c.SandboxList(ctx)
	if err != nil {
		return err
	}
	ids := make([]string, 0, len(list))
	for _, sb := range list {
		ids = append(ids, sb.ID)
	}
	return forEach(ctx, ids, 4, func(ctx context.Context, id string) error {
		return p.c.SandboxRemove(ctx, id, client.SandboxRemoveOptions{Force: true})
	})
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// readResolv returns a box's resolv.conf.
func readResolv(b box) string {
	data, _ := os.ReadFile(b.Resolv)
	return string(data)
}

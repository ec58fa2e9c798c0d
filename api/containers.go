package api

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	units "github.com/docker/go-units"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/portmap"
)

// sandboxImage is what the container routes report as a sandbox's image: a sandbox has
// none, and tools print this column.
const sandboxImage = "pier-sandbox"

// sandboxView is a sandbox with what the container routes render: its endpoints with
// their networks.
type sandboxView struct {
	sb   cnm.Sandbox
	eps  []cnm.Endpoint
	nets map[string]cnm.Network // by network ID
}

func (s *Server) sandboxView(ctx context.Context, sb cnm.Sandbox) (sandboxView, error) {
	eps, err := s.c.SandboxEndpoints(ctx, sb.ID)
	if err != nil {
		return sandboxView{}, err
	}
	v := sandboxView{sb: sb, eps: eps, nets: map[string]cnm.Network{}}
	for _, ep := range eps {
		if n, err := s.c.Network(ctx, ep.NetworkID); err == nil {
			v.nets[n.ID] = n
		}
	}
	return v, nil
}

var containerListTerms = []string{"id", "name", "network", "label", "status"}

// listContainers serves GET /containers/json: pier's sandboxes, read-only, in the shape
// of Docker's running containers (all and limit are accepted; every sandbox runs).
func (s *Server) listContainers(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	f, err := parseFilters(r.URL.Query().Get("filters"), containerListTerms...)
	if err != nil {
		return err
	}
	if _, err := queryBool(r, "all"); err != nil {
		return err
	}
	out := []container.Summary{}
	for _, sb := range s.c.Sandboxes(ctx) {
		v, err := s.sandboxView(ctx, sb)
		if errdefs.Is(err, errdefs.KindNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return err
		}
		if v.match(f) {
			out = append(out, v.summary())
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// inspectContainer serves GET /containers/{id}/json for a sandbox named by ID, unique
// ID prefix or name (with or without Docker's leading "/").
func (s *Server) inspectContainer(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	ref := strings.TrimPrefix(r.PathValue("id"), "/")
	sb, err := s.c.Sandbox(ctx, ref)
	if errdefs.Is(err, errdefs.KindNotFound) {
		return errdefs.NotFound("No such container: %s", ref)
	}
	if err != nil {
		return err
	}
	v, err := s.sandboxView(ctx, sb)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v.inspect(s.c.Dir(sb)))
	return nil
}

// match applies docker ps's filters: id and name as Docker's regular-expression match,
// network by name or ID prefix, status (always running), label (sandboxes have none).
func (v sandboxView) match(f filters) bool {
	return f.anyOf("id", func(p string) bool { return nameMatch(p, v.sb.ID) }) &&
		f.anyOf("name", func(p string) bool { return nameMatch(p, "/"+v.sb.Name) }) &&
		f.anyOf("status", func(p string) bool { return p == string(container.StateRunning) }) &&
		f.anyOf("network", v.onNetwork) &&
		f.labels("label", nil, false)
}

func (v sandboxView) onNetwork(ref string) bool {
	for _, n := range v.nets {
		if n.Name == ref || strings.HasPrefix(n.ID, ref) {
			return true
		}
	}
	return false
}

func (v sandboxView) summary() container.Summary {
	c := container.Summary{ID: v.sb.ID, Names: []string{"/" + v.sb.Name}, Image: sandboxImage,
		Created: v.sb.Created.Unix(), Labels: map[string]string{}, State: container.StateRunning,
		Status: "Up " + units.HumanDuration(time.Since(v.sb.Created)), Ports: []container.PortSummary{},
		NetworkSettings: &container.NetworkSettingsSummary{Networks: v.networks()}, Mounts: []container.MountPoint{}}
	c.HostConfig.NetworkMode = v.networkMode()
	for _, b := range v.sb.Published {
		c.Ports = append(c.Ports, container.PortSummary{IP: b.HostIP, PrivatePort: b.ContainerPort,
			PublicPort: b.HostPort, Type: string(b.Proto)})
	}
	return c
}

func (v sandboxView) inspect(dir string) container.InspectResponse {
	created := v.sb.Created.UTC().Format(time.RFC3339Nano)
	ports := v.ports()
	return container.InspectResponse{
		ID: v.sb.ID, Created: created, Name: "/" + v.sb.Name, Image: sandboxImage, Driver: "pier", Platform: "linux",
		Args: []string{}, Mounts: []container.MountPoint{},
		State: &container.State{Status: container.StateRunning, Running: true, StartedAt: created,
			FinishedAt: "0001-01-01T00:00:00Z"},
		ResolvConfPath: filepath.Join(dir, "resolv.conf"), HostnamePath: filepath.Join(dir, "hostname"),
		HostsPath:  filepath.Join(dir, "hosts"),
		HostConfig: &container.HostConfig{NetworkMode: container.NetworkMode(v.networkMode()), PortBindings: ports},
		Config: &container.Config{Hostname: v.sb.Hostname, Image: sandboxImage, Labels: map[string]string{},
			ExposedPorts: exposed(ports)},
		NetworkSettings: &container.NetworkSettings{SandboxID: v.sb.ID, SandboxKey: v.sb.Key, Ports: ports,
			Networks: v.networks()},
	}
}

// networkMode is Docker's HostConfig.NetworkMode: "host" for a host-network sandbox,
// else the network of the first interface (eth0, the first connected), "none" without one.
func (v sandboxView) networkMode() string {
	if v.sb.HostNetwork {
		return "host"
	}
	for _, ep := range v.eps {
		if n, ok := v.nets[ep.NetworkID]; ok {
			return n.Name
		}
	}
	return "none"
}

// networks renders the endpoints as Docker's NetworkSettings.Networks, keyed by network
// name. DNSNames are what the embedded DNS answers for the sandbox on that network
// (none on the predefined networks, which pier's resolver does not serve).
func (v sandboxView) networks() map[string]*network.EndpointSettings {
	out := make(map[string]*network.EndpointSettings, len(v.eps))
	for _, ep := range v.eps {
		n, ok := v.nets[ep.NetworkID]
		if !ok {
			continue // deleted meanwhile
		}
		mac, _ := net.ParseMAC(ep.MAC)
		es := &network.EndpointSettings{NetworkID: n.ID, EndpointID: ep.ID, Gateway: ep.Gateway4,
			IPAddress: ep.Addr4.Addr(), IPPrefixLen: prefixLen(ep.Addr4), IPv6Gateway: ep.Gateway6,
			GlobalIPv6Address: ep.Addr6.Addr(), GlobalIPv6PrefixLen: prefixLen(ep.Addr6),
			MacAddress: network.HardwareAddr(mac), Aliases: ep.Aliases, GwPriority: ep.Priority}
		for _, l := range ep.Links {
			es.Links = append(es.Links, l.Sandbox+":"+l.Alias)
		}
		if !n.Predefined {
			es.DNSNames = append(append([]string{v.sb.Name}, ep.Aliases...), v.sb.ID[:12])
		}
		out[n.Name] = es
	}
	return out
}

func prefixLen(p netip.Prefix) int {
	if !p.IsValid() {
		return 0
	}
	return p.Bits()
}

// ports renders the published bindings as Docker's port map ("80/tcp" → bindings).
func (v sandboxView) ports() network.PortMap {
	out := network.PortMap{}
	for _, b := range v.sb.Published {
		p, ok := network.PortFrom(b.ContainerPort, network.IPProtocol(b.Proto))
		if !ok {
			continue
		}
		out[p] = append(out[p], network.PortBinding{HostIP: b.HostIP, HostPort: portString(b)})
	}
	return out
}

func portString(b portmap.Binding) string { return strconv.Itoa(int(b.HostPort)) }

func exposed(ports network.PortMap) network.PortSet {
	out := network.PortSet{}
	for p := range ports {
		out[p] = struct{}{}
	}
	return out
}

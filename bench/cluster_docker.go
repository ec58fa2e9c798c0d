package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	dclient "github.com/moby/moby/client"
)

// swarm is the Docker side: three dockerds d1–d3 (d1 the manager) in namespaces
// pierbc-d1…3 with underlay addresses 198.51.100.1–3 on a bridge in pierbc-dlab.
type swarm struct {
	hosts []*dockerHost
}

type dockerHost struct {
	name, ns, addr string
	p              daemonPaths
	d              *daemon
	c              *dclient.Client
}

const swarmImage = "pierbench/busybox:local"

func startSwarm(ctx context.Context, c *cluster) (*swarm, error) {
	s := &swarm{}
	if err := s.build(ctx, c); err != nil {
		return nil, errors.Join(err, s.close(ctx))
	}
	return s, nil
}

func (s *swarm) build(ctx context.Context, c *cluster) error {
	labNS := clusterNSPrefix + "dlab"
	if err := addNetns(ctx, labNS); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-n", labNS, "link", "add", "dbr0", "type", "bridge"},
		{"-n", labNS, "addr", "add", "198.51.100.254/24", "dev", "dbr0"},
		{"-n", labNS, "link", "set", "dbr0", "up"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	tarball, err := busyboxImage(c.cfg.Busybox)
	if err != nil {
		return err
	}
	for i := range 3 {
		h := &dockerHost{name: fmt.Sprintf("d%d", i+1), addr: fmt.Sprintf("198.51.100.%d", i+1)}
		h.ns = clusterNSPrefix + h.name
		h.p = pathsFor(c.cfg.WorkDir, h.name)
		s.hosts = append(s.hosts, h)
		if err := addNetns(ctx, h.ns); err != nil {
			return err
		}
		for _, args := range [][]string{
			{"-n", labNS, "link", "add", "lab-" + h.name, "type", "veth", "peer", "name", "eth0", "netns", h.ns},
			{"-n", labNS, "link", "set", "lab-" + h.name, "master", "dbr0", "up"},
			{"-n", h.ns, "addr", "add", h.addr + "/24", "dev", "eth0"},
			{"-n", h.ns, "link", "set", "eth0", "up"},
		} {
			if _, err := run(ctx, "ip", args...); err != nil {
				return err
			}
		}
		if h.d, err = startDockerdIn(ctx, nsPath(h.ns), h.p); err != nil {
			return fmt.Errorf("%s: %w", h.name, err)
		}
		if h.c, err = dclient.New(dclient.WithHost("unix://"+h.p.sock), dclient.WithAPIVersionNegotiation()); err != nil {
			return err
		}
		res, err := h.c.ImageImport(ctx, dclient.ImageImportSource{Source: bytes.NewReader(tarball), SourceName: "-"}, swarmImage, dclient.ImageImportOptions{})
		if err != nil {
			return fmt.Errorf("%s: importing busybox: %w", h.name, err)
		}
		_, _ = io.Copy(io.Discard, res)
		res.Close()
		c.logf("dockerd %s running (pid %d)", h.name, h.d.pid())
	}
	if _, err := s.docker(ctx, 0, "swarm", "init", "--advertise-addr", s.hosts[0].addr, "--listen-addr", s.hosts[0].addr+":2377"); err != nil {
		return err
	}
	token, err := s.docker(ctx, 0, "swarm", "join-token", "-q", "worker")
	if err != nil {
		return err
	}
	for i := 1; i < 3; i++ {
		if _, err := s.docker(ctx, i, "swarm", "join", "--advertise-addr", s.hosts[i].addr, "--listen-addr", s.hosts[i].addr+":2377",
			"--token", strings.TrimSpace(token), s.hosts[0].addr+":2377"); err != nil {
			return err
		}
	}
	_, err = s.docker(ctx, 0, "network", "create", "-d", "overlay", "--attachable", clusterNet)
	return err
}

// docker runs the docker CLI against host i.
func (s *swarm) docker(ctx context.Context, i int, args ...string) (string, error) {
	return run(ctx, "docker", append([]string{"-H", "unix://" + s.hosts[i].p.sock}, args...)...)
}

// startBox runs a `sleep` container on the overlay on host i.
func (s *swarm) startBox(ctx context.Context, i int, name string) (box, error) {
	return s.startBoxOn(ctx, i, name, clusterNet)
}

// startBoxOn runs a `sleep` container on network net on host i.
func (s *swarm) startBoxOn(ctx context.Context, i int, name, net string) (box, error) {
	h := s.hosts[i]
	cfg := &container.Config{Image: swarmImage, Cmd: []string{"/bin/sleep", "3600"}}
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(net)}
	start := time.Now()
	cr, err := h.c.ContainerCreate(ctx, dclient.ContainerCreateOptions{Config: cfg, HostConfig: hc, Name: name})
	if err != nil {
		return box{}, fmt.Errorf("%s: creating %s: %w", h.name, name, err)
	}
	if _, err := h.c.ContainerStart(ctx, cr.ID, dclient.ContainerStartOptions{}); err != nil {
		_, rerr := h.c.ContainerRemove(context.WithoutCancel(ctx), cr.ID, dclient.ContainerRemoveOptions{Force: true})
		return box{}, errors.Join(fmt.Errorf("%s: starting %s: %w", h.name, name, err), rerr)
	}
	took := time.Since(start)
	b, err := (&dockerSys{c: h.c}).inspect(ctx, cr.ID)
	b.Took = took
	if err == nil && b.IPs[net] == "" {
		err = fmt.Errorf("%s: container %s has no address on %s: %v", h.name, name, net, b.IPs)
	}
	return b, err
}

func (s *swarm) removeBox(ctx context.Context, i int, b box) error {
	_, err := s.hosts[i].c.ContainerRemove(ctx, b.ID, dclient.ContainerRemoveOptions{Force: true})
	return err
}

// nodeState is the state of host i's node as the manager lists it.
func (s *swarm) nodeState(ctx context.Context, i int) (string, error) {
	r, err := s.hosts[0].c.NodeList(ctx, dclient.NodeListOptions{})
	if err != nil {
		return "", err
	}
	for _, n := range r.Items {
		if n.Status.Addr == s.hosts[i].addr {
			return string(n.Status.State), nil
		}
	}
	return "", nil
}

// killHost SIGKILLs every process of host i: dockerd, containerd, the shims and
// the containers (everything in its network namespace and their descendants).
func (s *swarm) killHost(ctx context.Context, i int) error {
	ino, err := nsInode(nsPath(s.hosts[i].ns))
	if err != nil {
		return err
	}
	err = killIn(ctx, map[uint64]bool{ino: true}, nil)
	<-s.hosts[i].d.done
	return err
}

// close removes the containers, leaves the swarm and stops the dockerds; the sweep
// of the namespaces and the work directory follows in cluster.cleanup.
func (s *swarm) close(ctx context.Context) error {
	var errs []error
	for i := len(s.hosts) - 1; i >= 0; i-- {
		h := s.hosts[i]
		if h.d == nil || h.d.exited() {
			continue
		}
		if h.c != nil {
			if err := (&dockerSys{c: h.c}).removeAll(ctx); err != nil {
				errs = append(errs, fmt.Errorf("%s: removing containers: %w", h.name, err))
			}
			_, _ = s.docker(ctx, i, "swarm", "leave", "--force")
			h.c.Close()
		}
		errs = append(errs, h.d.stop(30*time.Second))
	}
	return errors.Join(errs...)
}

// startDockerdIn starts dockerd in the network namespace at ns, in a private mount
// namespace whose /run is a fresh tmpfs (as startDockerd does for the single-host
// benchmark).
func startDockerdIn(ctx context.Context, ns string, p daemonPaths) (*daemon, error) {
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return nil, err
	}
	cfg, _ := json.Marshal(map[string]any{"deprecated-key-path": filepath.Join(p.dir, "key.json")})
	cfgPath := filepath.Join(p.dir, "daemon.json")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		return nil, err
	}
	d, err := startProc("dockerd", p.log, "nsenter", "--net="+ns, "--",
		"unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", `mount -t tmpfs -o mode=755 pierbench-run /run && exec "$@"`, "sh",
		"dockerd", "--config-file", cfgPath, "--data-root", p.data, "--exec-root", p.exec,
		"-H", "unix://"+p.sock, "--pidfile", filepath.Join(p.dir, "dockerd.pid"))
	if err != nil {
		return nil, err
	}
	if err := d.waitSocket(ctx, p.sock, 60*time.Second); err != nil {
		return d, err
	}
	return d, nil
}

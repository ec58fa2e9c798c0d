package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/piernet/pier/api/types"
)

// ingressPath is one way from a client to the published service.
type ingressPath struct {
	scenario, system string
	ns, addr         string // the client's namespace and where it connects
	err              error
	baseline         bool // the row the others are divided by
}

// scenIngress: connect + one HTTP/1.0 exchange from the lab's client to a published
// port, through the host with the task and through one without.
func (c *cluster) scenIngress(ctx context.Context) *csection {
	const rounds = 4
	n := max(c.cfg.NConn/rounds, 1)
	sec := &csection{Title: "Ingress: a published port through the routing mesh", Unit: "ms",
		Intro: fmt.Sprintf("A service with one task on host 3 publishes 8080→80 in ingress mode (pier: `POST /pier/v1/services` {Ports 80/tcp, Publish 8080:80}, the task a sandbox with `Service` set, `pierbench probe http-server` on :80 in its namespace; Docker: `docker service create --publish 8080:80 --constraint` on d3, `busybox httpd`). `pierbench probe http-client` in the lab's client namespace (pier 192.0.2.254, Docker 198.51.100.254, on the hosts' underlay bridge) times each connection: connect, `GET / HTTP/1.0`, the answer read to EOF; one at a time, 20 unrecorded first; %d rounds of %d per path, rotating. Baseline: the same exchange from host 3's own network namespace straight to the task's address on the ingress network (no DNAT, no underlay hop). No goal in issue 17; the ratio is against the baseline.", rounds, n)}
	paths := c.pierIngress(ctx)
	paths = append(paths, c.dockerIngress(ctx, sec)...)
	samples := make([][]float64, len(paths))
	for i := range rounds {
		for j := range paths {
			p := &paths[(i+j)%len(paths)]
			k := (i + j) % len(paths)
			if p.err != nil || ctx.Err() != nil {
				continue
			}
			out, err := inNetns(ctx, p.ns, c.cfg.Self, "probe", "http-client", "-addr", p.addr, "-n", strconv.Itoa(n), "-timeout", "20s").Output()
			var ts []float64
			if err == nil {
				err = json.Unmarshal(out, &ts)
			}
			if err != nil {
				p.err = fmt.Errorf("http-client to %s: %w%s", p.addr, err, exitText(err))
				continue
			}
			samples[k] = append(samples[k], ts...)
		}
	}
	var base []float64
	for k, p := range paths {
		if p.baseline {
			base = samples[k]
		}
	}
	for k, p := range paths {
		r := crow{Scenario: p.scenario, System: p.system, Samples: samples[k], Err: p.err}
		if !p.baseline && len(samples[k]) > 0 && len(base) > 0 {
			r.Ratio = ratioTo(samples[k], base) + " of baseline"
		}
		sec.Rows = append(sec.Rows, r)
		c.logf("ingress %s, %s: p50 %.3f ms", p.system, p.scenario, median(samples[k]))
	}
	return sec
}

// exitText is a failed command's stderr, if it kept one.
func exitText(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return ": " + strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

// pierIngress publishes service bcweb with a task on h3 and returns the paths to it.
func (c *cluster) pierIngress(ctx context.Context) []ingressPath {
	p, l := c.pier, c.pier.lab
	paths := []ingressPath{
		{scenario: "via host 3 (has the task)", system: "pier mesh", ns: l.ClientNS, addr: l.Hosts[2].Addr.String() + ":8080"},
		{scenario: "via host 1 (no task: forwarded over the overlay)", system: "pier mesh", ns: l.ClientNS, addr: l.Hosts[0].Addr.String() + ":8080"},
		{scenario: "baseline: host 3's namespace → the task's ingress address", system: "pier, no mesh", ns: l.Hosts[2].NetNS, baseline: true},
		{scenario: "reference: lab client → a server in host 3's namespace", system: "underlay, no mesh", ns: l.ClientNS, addr: l.Hosts[2].Addr.String() + ":8081"},
	}
	fail := func(err error) []ingressPath {
		for i := range paths {
			paths[i].err = err
		}
		return paths
	}
	if _, err := p.clients[0].ServiceCreate(ctx, types.ServiceCreateRequest{Name: "bcweb", Networks: []string{clusterNet}, Ports: []string{"80/tcp"}, Publish: []string{"8080:80"}}); err != nil {
		return fail(fmt.Errorf("creating the service: %w", err))
	}
	task, err := p.create(ctx, 2, types.SandboxCreateRequest{Name: "bc-web3", Service: "bcweb"}, "ingress")
	if err != nil {
		return fail(err)
	}
	paths[2].addr = task.IPs["ingress"] + ":80"
	if _, err := c.startHelper(startProc("http-task", filepath.Join(c.cfg.WorkDir, "http-task.log"),
		"nsenter", "--net="+task.NetNS, "--", c.cfg.Self, "probe", "http-server", "-addr", ":80")); err != nil {
		return fail(err)
	}
	if _, err := c.startHelper(startProc("http-h3", filepath.Join(c.cfg.WorkDir, "http-h3.log"),
		"nsenter", "--net="+l.Hosts[2].NetNS, "--", c.cfg.Self, "probe", "http-server", "-addr", paths[3].addr)); err != nil {
		paths[3].err = err
	}
	return paths
}

// dockerIngress does the same on the swarm, where the ingress mesh needs IPVS; what
// Docker does without it goes into the section's notes.
func (c *cluster) dockerIngress(ctx context.Context, sec *csection) []ingressPath {
	dlab := nsPath(clusterNSPrefix + "dlab")
	paths := []ingressPath{
		{scenario: "via host 3 (has the task)", system: "Docker mesh", ns: dlab, addr: "198.51.100.3:8080"},
		{scenario: "via host 1 (no task)", system: "Docker mesh", ns: dlab, addr: "198.51.100.1:8080"},
	}
	err := c.dockerService(ctx, sec)
	for i := range paths {
		paths[i].err = err
	}
	return paths
}

func (c *cluster) dockerService(ctx context.Context, sec *csection) error {
	s := c.docker
	if s == nil {
		return errors.New("the Docker swarm did not start (see Problems)")
	}
	id, err := s.docker(ctx, 2, "info", "-f", "{{.Swarm.NodeID}}")
	if err != nil {
		return err
	}
	if _, err := s.docker(ctx, 0, "node", "update", "--label-add", "bcweb=1", strings.TrimSpace(id)); err != nil {
		return err
	}
	if _, err := s.docker(ctx, 0, "service", "create", "--detach", "--name", "bcweb", "--network", clusterNet,
		"--publish", "8080:80", "--constraint", "node.labels.bcweb==1", "--no-resolve-image",
		swarmImage, "/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/tmp"); err != nil {
		return err
	}
	var state string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(500 * time.Millisecond) {
		state, _ = s.docker(ctx, 0, "service", "ps", "bcweb", "--no-trunc", "--format", "{{.CurrentState}} | {{.Error}}")
		if strings.HasPrefix(strings.TrimSpace(state), "Running") {
			break
		}
	}
	sec.Notes = append(sec.Notes, "Docker: `docker service ps bcweb` after up to 60 s: "+oneLine(strings.TrimSpace(state)))
	for i, h := range s.hosts {
		if lines := grepLog(h.p.log, "ipvs", "ingress"); lines != "" {
			sec.Notes = append(sec.Notes, fmt.Sprintf("Docker: d%d's log mentions: %s", i+1, lines))
		}
	}
	if !strings.HasPrefix(strings.TrimSpace(state), "Running") {
		return fmt.Errorf("the service's task is not running after 60 s: %s", oneLine(strings.TrimSpace(state)))
	}
	sec.Notes = append(sec.Notes, "Docker: "+c.dockerTaskAnswers(ctx))
	return nil
}

// dockerTaskAnswers checks the task itself: its httpd, asked inside its container.
func (c *cluster) dockerTaskAnswers(ctx context.Context) string {
	id, err := c.docker.docker(ctx, 2, "ps", "-q", "--filter", "label=com.docker.swarm.service.name=bcweb")
	if err != nil || strings.TrimSpace(id) == "" {
		return fmt.Sprintf("no task container found on d3 (%v)", err)
	}
	b, err := (&dockerSys{c: c.docker.hosts[2].c}).inspect(ctx, strings.Fields(id)[0])
	if err != nil {
		return "inspecting the task: " + err.Error()
	}
	_, err = inNetns(ctx, b.NetNS, c.cfg.Self, "probe", "http-client", "-addr", "127.0.0.1:80", "-n", "1", "-timeout", "5s").Output()
	if err != nil {
		return fmt.Sprintf("the task container (addresses %v) does not answer on 127.0.0.1:80 either: %v%s", b.IPs, err, exitText(err))
	}
	return fmt.Sprintf("the task container (addresses %v) answers on 127.0.0.1:80 inside itself: the task runs, the mesh in front of it does not.", b.IPs)
}

// logKey matches key material in Docker's log lines (its IPsec SA dumps).
var logKey = regexp.MustCompile(`((?i:key)[:=] ?)0x[0-9a-fA-F]+`)

// grepLog returns up to the last two lines of a log file that contain any of words
// (case-insensitive), shortened.
func grepLog(path string, words ...string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var hits []string
	for _, l := range strings.Split(string(b), "\n") {
		low := strings.ToLower(l)
		for _, w := range words {
			if strings.Contains(low, w) && (strings.Contains(low, "level=error") || strings.Contains(low, "level=warn")) {
				l = logKey.ReplaceAllString(l, "${1}…") // keys stay out of the report
				if len(l) > 400 {
					l = l[:200] + " … " + l[len(l)-200:]
				}
				hits = append(hits, "`"+strings.ReplaceAll(l, "`", "'")+"`")
				break
			}
		}
	}
	if len(hits) > 2 {
		hits = hits[len(hits)-2:]
	}
	return strings.Join(hits, "; ")
}

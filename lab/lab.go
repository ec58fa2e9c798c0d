// Package lab builds a pier cluster on one machine: simulated hosts, each a network
// namespace with an underlay address from 192.0.2.0/24 on a bridge inside a lab
// namespace, each running its own pierd. By default h1 starts the cluster
// (--cluster-init: an embedded etcd member) and the others join it with its token
// (--cluster-join; the first three become etcd members); with External, the cluster
// store is Debian's etcd running in the lab namespace (--cluster-store). It is what
// `pier lab` runs and the harness of every multi-host test.
//
// Nothing touches the machine's own interfaces, routes or firewall: every address is
// on the lab bridge, inside namespaces the lab made; the cluster store listens on the
// lab address only. Down removes everything the lab made (processes, mounts,
// namespaces, files), also after its pierds were killed or Up failed half-way.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/netns"
)

// DefaultRoot holds the labs' state: DefaultRoot/<name>.
const DefaultRoot = "/run/pier-lab"

// The lab's addresses: hosts get 192.0.2.1…, the lab namespace (the "client", a
// machine on the same LAN) 192.0.2.254, where the cluster store listens.
var (
	ClientAddr = netip.MustParseAddr("192.0.2.254")
	storePort  = 2379
)

const bridgeName = "plab0"

// Options configure Up.
type Options struct {
	Name  string // default "pier"
	Hosts int    // default 3
	Root  string // parent of the lab's state directory; default DefaultRoot
	Pierd string // the pierd binary; default next to this executable, else $PATH
	// External runs the cluster store as an external etcd (Debian's etcd-server) in the
	// lab namespace instead of embedded members.
	External bool
	Etcd     string // the etcd binary for External; default $PATH
	// PierdArgs are extra pierd flags for every host (e.g. a shorter --cluster-node-ttl).
	PierdArgs []string
}

// Host is one simulated host.
type Host struct {
	Name   string
	Addr   netip.Addr
	NetNS  string // pinned network namespace
	Socket string // pierd's API socket
	Data   string // pierd's data root
	Exec   string // pierd's exec root
	Log    string // pierd's log
	PID    int    // pierd's process (0 = not running)
}

// Lab is a lab's state (written to <dir>/state.json).
type Lab struct {
	Name     string
	Dir      string
	ClientNS string // the lab namespace
	EtcdPID  int
	Hosts    []Host
	Pierd    string
	Etcd     string
	External bool
	Args     []string

	procs map[int]*exec.Cmd // children of this process, reaped on kill
}

// StoreURL is the cluster store's URL: the external etcd, or h1's embedded member.
func (l *Lab) StoreURL() string {
	if l.External {
		return fmt.Sprintf("etcd://%s:%d", ClientAddr, storePort)
	}
	return fmt.Sprintf("etcd://%s:%d", l.Hosts[0].Addr, storePort)
}

func (o *Options) defaults() error {
	if o.Name == "" {
		o.Name = "pier"
	}
	if o.Hosts == 0 {
		o.Hosts = 3
	}
	if o.Hosts < 1 || o.Hosts > 200 {
		return errdefs.InvalidArgument("--hosts %d: want 1 to 200", o.Hosts)
	}
	if strings.ContainsAny(o.Name, "/ \t\n") || len(o.Name) > 32 {
		return errdefs.InvalidArgument("invalid lab name %q: up to 32 characters, no slashes or spaces", o.Name)
	}
	if o.Root == "" {
		o.Root = DefaultRoot
	}
	var err error
	if o.Pierd, err = findBinary(o.Pierd, "pierd"); err != nil {
		return err
	}
	if o.External {
		if o.Etcd, err = findBinary(o.Etcd, "etcd"); err != nil {
			return errdefs.NotFound("an external cluster store needs etcd: apt-get install etcd-server (%v)", err)
		}
	}
	return nil
}

// findBinary resolves name: the given path, next to the running executable, or $PATH.
func findBinary(given, name string) (string, error) {
	if given != "" {
		return filepath.Abs(given)
	}
	if self, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(self), name); isExecutable(p) {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", errdefs.NotFound("%s not found next to this program or on $PATH", name)
	}
	return filepath.Abs(p)
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// Up builds a lab and starts its store and pierds; a name in use is refused. On any
// failure everything made so far is removed.
func Up(ctx context.Context, o Options) (l *Lab, err error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	dir := filepath.Join(o.Root, o.Name)
	if _, err := os.Stat(dir); err == nil {
		return nil, errdefs.Conflict("lab %q already exists (%s): pier lab down --name %s first", o.Name, dir, o.Name)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	l = &Lab{Name: o.Name, Dir: dir, Pierd: o.Pierd, Etcd: o.Etcd, External: o.External, Args: o.PierdArgs, procs: map[int]*exec.Cmd{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Down())
			l = nil
		}
	}()
	if err := l.buildNetwork(o.Hosts); err != nil {
		return l, err
	}
	if l.External {
		if err := l.startStore(ctx); err != nil {
			return l, err
		}
	}
	for i := range l.Hosts {
		if err := l.startPierd(ctx, &l.Hosts[i]); err != nil {
			return l, err
		}
	}
	return l, l.save()
}

// Open attaches to a running lab.
func Open(root, name string) (*Lab, error) {
	if root == "" {
		root = DefaultRoot
	}
	if name == "" {
		name = "pier"
	}
	b, err := os.ReadFile(filepath.Join(root, name, "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(filepath.Join(root, name)); serr == nil {
			// Half-built (Up was interrupted): enough to tear it down.
			return &Lab{Name: name, Dir: filepath.Join(root, name), procs: map[int]*exec.Cmd{}}, nil
		}
		return nil, errdefs.NotFound("no lab %q (looked in %s)", name, root)
	}
	if err != nil {
		return nil, err
	}
	var l Lab
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("reading lab state: %w", err)
	}
	l.procs = map[int]*exec.Cmd{}
	return &l, nil
}

// List names the labs under root.
func List(root string) []string {
	if root == "" {
		root = DefaultRoot
	}
	entries, _ := os.ReadDir(root)
	var out []string
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out
}

func (l *Lab) save() error {
	b, _ := json.MarshalIndent(l, "", "  ")
	return os.WriteFile(filepath.Join(l.Dir, "state.json"), b, 0o600)
}

// Host returns a host by name (h1…) or 1-based index.
func (l *Lab) Host(name string) (*Host, error) {
	for i := range l.Hosts {
		if l.Hosts[i].Name == name || strconv.Itoa(i+1) == name {
			return &l.Hosts[i], nil
		}
	}
	return nil, errdefs.NotFound("lab %s has no host %q (hosts: h1 to h%d, and client)", l.Name, name, len(l.Hosts))
}

// buildNetwork makes the lab namespace with its bridge and one namespace per host.
func (l *Lab) buildNetwork(n int) error {
	nsDir := filepath.Join(l.Dir, "netns")
	if err := os.MkdirAll(nsDir, 0o700); err != nil {
		return err
	}
	l.ClientNS = filepath.Join(nsDir, "client")
	lab, err := netns.Create(context.Background(), l.ClientNS)
	if err != nil {
		return fmt.Errorf("creating the lab namespace: %w", err)
	}
	defer lab.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}}
	if err := lab.NL.LinkAdd(br); err != nil {
		return fmt.Errorf("creating the lab bridge: %w", err)
	}
	if err := addrUp(lab, bridgeName, ClientAddr); err != nil {
		return err
	}
	bridge, err := lab.NL.LinkByName(bridgeName)
	if err != nil {
		return err
	}
	for i := range n {
		h := Host{Name: fmt.Sprintf("h%d", i+1), Addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)})}
		hd := filepath.Join(l.Dir, h.Name)
		h.NetNS, h.Socket = filepath.Join(nsDir, h.Name), filepath.Join(l.Dir, h.Name+".sock")
		h.Data, h.Exec, h.Log = filepath.Join(hd, "data"), filepath.Join(hd, "exec"), filepath.Join(hd, "pierd.log")
		l.Hosts = append(l.Hosts, h)
		if err := l.buildHost(lab, bridge, h); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) buildHost(lab *netns.Namespace, bridge netlink.Link, h Host) error {
	if err := os.MkdirAll(filepath.Dir(h.Log), 0o700); err != nil {
		return err
	}
	host, err := netns.Create(context.Background(), h.NetNS)
	if err != nil {
		return fmt.Errorf("creating host %s: %w", h.Name, err)
	}
	defer host.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lab-" + h.Name, MasterIndex: bridge.Attrs().Index},
		PeerName: "eth0", PeerNamespace: netlink.NsFd(int(host.Handle))}
	if err := lab.NL.LinkAdd(veth); err != nil {
		return fmt.Errorf("wiring host %s: %w", h.Name, err)
	}
	if err := lab.NL.LinkSetUp(veth); err != nil {
		return err
	}
	return addrUp(host, "eth0", h.Addr)
}

func addrUp(ns *netns.Namespace, name string, a netip.Addr) error {
	l, err := ns.NL.LinkByName(name)
	if err != nil {
		return err
	}
	if err := ns.NL.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		return fmt.Errorf("addressing %s: %w", name, err)
	}
	return ns.NL.LinkSetUp(l)
}

// startStore runs the cluster store (etcd) in the lab namespace, on the lab address.
func (l *Lab) startStore(ctx context.Context) error {
	dir := filepath.Join(l.Dir, "etcd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	client := fmt.Sprintf("http://%s:%d", ClientAddr, storePort)
	peer := fmt.Sprintf("http://%s:%d", ClientAddr, storePort+1)
	pid, err := l.spawn(l.ClientNS, filepath.Join(dir, "etcd.log"), nil, l.Etcd, "--name", "lab", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client, "--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer, "--initial-cluster", "lab="+peer, "--log-level", "warn")
	if err != nil {
		return fmt.Errorf("starting the cluster store: %w", err)
	}
	l.EtcdPID = pid
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if l.dialOK(ctx, net.JoinHostPort(ClientAddr.String(), strconv.Itoa(storePort))) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the cluster store did not start in 15 s; its log:\n%s", tail(filepath.Join(dir, "etcd.log")))
}

// dialOK reports whether a TCP connection from the lab namespace to addr succeeds.
func (l *Lab) dialOK(ctx context.Context, addr string) bool {
	ns, err := netns.Open(l.ClientNS)
	if err != nil {
		return false
	}
	defer ns.Close()
	var ok bool
	_ = ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			ok = true
		}
		return nil
	})
	return ok
}

func (l *Lab) pierdArgs(h *Host) []string {
	args := []string{"--data-root", h.Data, "--exec-root", h.Exec, "-H", "unix://" + h.Socket,
		"--cluster-advertise", h.Addr.String(), "--node-name", h.Name}
	switch {
	case l.External:
		args = append(args, "--cluster-store", l.StoreURL())
	case h.Name == l.Hosts[0].Name:
		args = append(args, "--cluster-init")
	default:
		args = append(args, "--cluster-join", l.StoreURL(), "--cluster-token-file", l.TokenFile())
	}
	return append(args, l.Args...)
}

// TokenFile is where h1 keeps the cluster's join token (embedded members).
func (l *Lab) TokenFile() string { return filepath.Join(l.Hosts[0].Data, "cluster", "token") }

// startPierd starts a host's pierd and waits until its API answers.
func (l *Lab) startPierd(ctx context.Context, h *Host) error {
	pid, err := l.spawn(h.NetNS, h.Log, nil, l.Pierd, l.pierdArgs(h)...)
	if err != nil {
		return fmt.Errorf("starting pierd on %s: %w", h.Name, err)
	}
	h.PID = pid
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if ping(ctx, h.Socket) {
			return nil
		}
		if !alive(pid) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("pierd on %s did not come up; its log:\n%s", h.Name, tail(h.Log))
}

// ping asks a pierd's API for /_ping.
func ping(ctx context.Context, sock string) bool {
	c := http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://pierd/_ping", nil)
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// spawn starts argv inside the network namespace at ns (through nsenter, which enters
// it and execs the program: the PID is the program's), in its own session, output to
// logPath. The process outlives this one; this one reaps it if it ends first.
func (l *Lab) spawn(ns, logPath string, env []string, prog string, args ...string) (int, error) {
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=" + ns, "--", prog}, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	l.procs[cmd.Process.Pid] = cmd
	go func() { _ = cmd.Wait() }() // reap it if it dies while we run
	return cmd.Process.Pid, nil
}

func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie is not running, unless it is a thread-group leader whose other
	// threads are still exiting: they hold its files (the listening sockets a
	// restarted pierd binds again) until the last one is gone.
	f := strings.Fields(string(b))
	if len(f) > 2 && f[2] != "Z" {
		return true
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	return err == nil && len(tasks) > 1
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	// etcd's own chatter (peers lost and found on every restart) would fill the tail.
	var keep []string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, "component=etcd") {
			keep = append(keep, line)
		}
	}
	s := strings.Join(keep, "\n")
	if len(s) > 4000 {
		s = s[len(s)-4000:]
	}
	return s
}

// Kill SIGKILLs a host's pierd, as a crash would.
func (l *Lab) Kill(name string) error { return l.halt(name, 0) }

// Stop stops a host's pierd gracefully, as `systemctl stop` would: SIGTERM, then
// SIGKILL after 10 s. Its sandboxes stay.
func (l *Lab) Stop(name string) error { return l.halt(name, 10*time.Second) }

func (l *Lab) halt(name string, grace time.Duration) error {
	h, err := l.Host(name)
	if err != nil {
		return err
	}
	if !alive(h.PID) {
		return errdefs.Conflict("pierd on %s is not running", h.Name)
	}
	stop(h.PID, grace)
	h.PID = 0
	return l.save()
}

// Start starts a host's pierd again (after Kill or Stop).
func (l *Lab) Start(ctx context.Context, name string) error {
	h, err := l.Host(name)
	if err != nil {
		return err
	}
	if alive(h.PID) {
		return errdefs.Conflict("pierd on %s is already running (pid %d)", h.Name, h.PID)
	}
	if err := l.startPierd(ctx, h); err != nil {
		return err
	}
	return l.save()
}

// StopStore SIGKILLs the external cluster store (External labs only); StartStore
// starts it again on its data.
func (l *Lab) StopStore() error {
	if !l.External {
		return errdefs.InvalidArgument("lab %s has no external store: its etcd members run inside the pierds (kill those)", l.Name)
	}
	stop(l.EtcdPID, 0)
	l.EtcdPID = 0
	return l.save()
}

// StartStore starts a stopped external store again.
func (l *Lab) StartStore(ctx context.Context) error {
	if !l.External {
		return errdefs.InvalidArgument("lab %s has no external store", l.Name)
	}
	if err := l.startStore(ctx); err != nil {
		return err
	}
	return l.save()
}

// Partition takes a host's underlay link down; Heal brings it back.
func (l *Lab) Partition(name string) error { return l.setLink(name, false) }

// Heal brings a partitioned host's underlay link back up.
func (l *Lab) Heal(name string) error { return l.setLink(name, true) }

func (l *Lab) setLink(name string, up bool) error {
	h, err := l.Host(name)
	if err != nil {
		return err
	}
	ns, err := netns.Open(h.NetNS)
	if err != nil {
		return err
	}
	defer ns.Close()
	eth0, err := ns.NL.LinkByName("eth0")
	if err != nil {
		return err
	}
	if up {
		return ns.NL.LinkSetUp(eth0)
	}
	return ns.NL.LinkSetDown(eth0)
}

// Command returns a command that runs argv in a host's network namespace ("client":
// the lab namespace) with PIER_HOST and DOCKER_HOST set to that host's pierd.
func (l *Lab) Command(ctx context.Context, name string, argv ...string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, errdefs.InvalidArgument("no command given")
	}
	ns, env := l.ClientNS, []string{}
	if name != "client" {
		h, err := l.Host(name)
		if err != nil {
			return nil, err
		}
		ns = h.NetNS
		env = []string{"PIER_HOST=unix://" + h.Socket, "DOCKER_HOST=unix://" + h.Socket}
	}
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + ns, "--"}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	return cmd, nil
}

// Down stops every process, removes every mount and namespace, and the lab's files.
func (l *Lab) Down() error {
	var pids []int
	for _, h := range l.Hosts {
		pids = append(pids, h.PID)
	}
	pids = append(pids, l.EtcdPID)
	for _, pid := range pids {
		stop(pid, 5*time.Second)
	}
	var errs []error
	errs = append(errs, unmountUnder(l.Dir))
	if err := os.RemoveAll(l.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// stop ends a process: SIGTERM and up to grace for it to exit, then SIGKILL (at once
// when grace is 0), and waits until it is gone.
func stop(pid int, grace time.Duration) {
	if !alive(pid) {
		return
	}
	if grace > 0 {
		_ = unix.Kill(pid, unix.SIGTERM)
		deadline := time.Now().Add(grace)
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	_ = unix.Kill(pid, unix.SIGKILL)
	for deadline := time.Now().Add(5 * time.Second); alive(pid) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
}

// unmountUnder lazily unmounts every mount point below dir (namespace pins, the
// pierds' sandbox pins), deepest first.
func unmountUnder(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var mounts []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mounts = append(mounts, f[4])
		}
	}
	var errs []error
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := unix.Unmount(mounts[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", mounts[i], err))
		}
	}
	return errors.Join(errs...)
}

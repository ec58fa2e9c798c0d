package bridge

import (
	"fmt"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fakeKernel is an in-memory Kernel. Dump prints it like `ip -d link` and `ip addr`,
// sorted, one fact a line. fail makes steps fail (see failLocked for their names).
type fakeKernel struct {
	mu      sync.Mutex // guards the fields below
	links   []*fakeLink
	sysctls map[string]string
	fds     map[netlink.NsFd]string
	fail    map[string]error
	next    int
}

// fakeLink is one device. ns is "host" or a sandbox key.
type fakeLink struct {
	ns, name, kind        string
	index, mtu            int
	master                *fakeLink
	peer                  *fakeLink // the other end of a veth
	mac                   net.HardwareAddr
	alias                 string
	group                 uint32
	up, isolated, hairpin bool
	noAddrGen             bool
	addrs                 []string
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{sysctls: map[string]string{}, fds: map[netlink.NsFd]string{}, fail: map[string]error{}, next: 1}
}

// failOn makes step fail with err from now on (nil: succeed again).
func (f *fakeKernel) failOn(step string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fail, step)
		return
	}
	f.fail[step] = err
}

// failLocked returns the injected failure of step in namespace ns: steps in a
// sandbox are named "sandbox <step>".
func (f *fakeKernel) failLocked(ns, step string) error {
	if ns != "host" {
		step = "sandbox " + step
	}
	return f.fail[step]
}

func nsName(ns string) string {
	if ns == "" {
		return "host"
	}
	return ns
}

// addLocked creates a device; the name must be free in ns and short enough.
func (f *fakeKernel) addLocked(l *fakeLink) error {
	if len(l.name) == 0 || len(l.name) >= unix.IFNAMSIZ {
		return unix.EINVAL
	}
	if f.byNameLocked(l.ns, l.name) != nil {
		return unix.EEXIST
	}
	f.next++
	l.index = f.next
	f.links = append(f.links, l)
	return nil
}

func (f *fakeKernel) byNameLocked(ns, name string) *fakeLink {
	for _, l := range f.links {
		if l.ns == ns && l.name == name {
			return l
		}
	}
	return nil
}

// findLocked resolves l as the kernel does: by index, or by name if it has none.
func (f *fakeKernel) findLocked(ns string, l netlink.Link) *fakeLink {
	a := l.Attrs()
	if a.Index == 0 {
		return f.byNameLocked(ns, a.Name)
	}
	for _, fl := range f.links {
		if fl.ns == ns && fl.index == a.Index {
			return fl
		}
	}
	return nil
}

// LinkByName implements Kernel.
func (f *fakeKernel) LinkByName(ns, name string) (netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l := f.byNameLocked(nsName(ns), name); l != nil {
		return l.netlink(), nil
	}
	return nil, netlink.LinkNotFoundError{}
}

// netlink returns the link as netlink reports it.
func (l *fakeLink) netlink() netlink.Link {
	a := netlink.LinkAttrs{Name: l.name, Index: l.index, MTU: l.mtu, HardwareAddr: l.mac, Alias: l.alias, Group: l.group}
	if l.master != nil {
		a.MasterIndex = l.master.index
	}
	if l.up {
		a.Flags |= net.FlagUp
	}
	switch l.kind {
	case "bridge":
		return &netlink.Bridge{LinkAttrs: a}
	case "veth":
		return &netlink.Veth{LinkAttrs: a, PeerName: l.peer.name}
	}
	return &netlink.Device{LinkAttrs: a}
}

// LinkList implements Kernel.
func (f *fakeKernel) LinkList() ([]netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []netlink.Link
	for _, l := range f.links {
		if l.ns == "host" {
			out = append(out, l.netlink())
		}
	}
	return out, nil
}

// LinkAdd implements Kernel: bridges and veths (the peer may go to a sandbox).
func (f *fakeKernel) LinkAdd(l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("host", "add "+l.Type()); err != nil {
		return err
	}
	a := l.Attrs()
	fl := &fakeLink{ns: "host", name: a.Name, kind: l.Type(), mtu: a.MTU, mac: a.HardwareAddr, group: a.Group}
	if a.MasterIndex != 0 {
		if fl.master = f.findLocked("host", &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: a.MasterIndex}}); fl.master == nil {
			return unix.ENODEV
		}
	}
	v, ok := l.(*netlink.Veth)
	if !ok {
		if err := f.addLocked(fl); err != nil {
			return err
		}
		a.Index = fl.index
		return nil
	}
	peer := &fakeLink{ns: "host", name: v.PeerName, kind: "veth", mtu: a.MTU, mac: v.PeerHardwareAddr, peer: fl}
	if fd, ok := v.PeerNamespace.(netlink.NsFd); ok {
		if peer.ns, ok = f.fds[fd]; !ok {
			return unix.EBADF
		}
	}
	fl.peer = peer
	if f.byNameLocked(peer.ns, peer.name) != nil || f.byNameLocked("host", fl.name) != nil {
		return unix.EEXIST
	}
	if err := f.addLocked(fl); err != nil {
		return err
	}
	if err := f.addLocked(peer); err != nil {
		f.removeLocked(fl)
		return err
	}
	a.Index = fl.index
	return nil
}

// LinkDel implements Kernel.
func (f *fakeKernel) LinkDel(ns string, l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	ns = nsName(ns)
	if err := f.failLocked(ns, "del"); err != nil {
		return err
	}
	fl := f.findLocked(ns, l)
	if fl == nil {
		return unix.ENODEV
	}
	f.removeLocked(fl)
	return nil
}

// removeLocked deletes a device as the kernel does: a veth's peer, a bridge's port
// memberships and every device's addresses and per-device sysctls go with it.
func (f *fakeKernel) removeLocked(l *fakeLink) {
	f.links = slices.DeleteFunc(f.links, func(o *fakeLink) bool { return o == l || o == l.peer })
	for _, o := range f.links {
		if o.master == l {
			o.master = nil
		}
	}
	for k := range f.sysctls {
		if strings.Contains(k, "/"+l.name+"/") && l.ns == "host" {
			delete(f.sysctls, k)
		}
	}
}

// LinkSet implements Kernel.
func (f *fakeKernel) LinkSet(ns string, l netlink.Link, c Change) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	ns = nsName(ns)
	if ns != "host" && !f.sandboxLocked(ns) {
		return fmt.Errorf("opening network namespace %s: %w", ns, unix.ENOENT)
	}
	fl := f.findLocked(ns, l)
	if fl == nil {
		return unix.ENODEV
	}
	for _, s := range []struct {
		on   bool
		name string
		do   func() error
	}{
		{c.Alias != "", "alias", func() error { fl.alias = c.Alias; return nil }},
		{c.Isolated, "isolated", func() error { return fl.setPortFlag(&fl.isolated) }},
		{c.Hairpin, "hairpin", func() error { return fl.setPortFlag(&fl.hairpin) }},
		{c.NoIP6AddrGen, "addrgenmode", func() error { fl.noAddrGen = true; return nil }},
		{c.Down, "down", func() error { fl.up = false; return nil }},
		{c.Name != "", "rename", func() error { return f.renameLocked(fl, c.Name) }},
		{c.Group != 0, "group", func() error { fl.group = c.Group; return nil }},
		{c.Up, "up", func() error { fl.up = true; return nil }},
	} {
		if !s.on {
			continue
		}
		err := f.failLocked(ns, s.name)
		if err == nil {
			err = s.do()
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

func (l *fakeLink) setPortFlag(flag *bool) error {
	if l.master == nil {
		return unix.EOPNOTSUPP // not a bridge port
	}
	*flag = true
	return nil
}

// renameLocked renames a device, which the kernel refuses while it is up.
func (f *fakeKernel) renameLocked(l *fakeLink, name string) error {
	if l.up {
		return unix.EBUSY
	}
	if len(name) >= unix.IFNAMSIZ {
		return unix.EINVAL
	}
	if f.byNameLocked(l.ns, name) != nil {
		return unix.EEXIST
	}
	l.name = name
	return nil
}

func (f *fakeKernel) sandboxLocked(key string) bool {
	for _, k := range f.fds {
		if k == key {
			return true
		}
	}
	return false
}

// AddrReplace implements Kernel.
func (f *fakeKernel) AddrReplace(l netlink.Link, a *netlink.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("host", "addr"); err != nil {
		return err
	}
	fl := f.findLocked("host", l)
	if fl == nil {
		return unix.ENODEV
	}
	s := a.IPNet.String()
	if a.Flags&unix.IFA_F_NODAD != 0 {
		s += " nodad"
	}
	if !slices.Contains(fl.addrs, s) {
		fl.addrs = append(fl.addrs, s)
	}
	return nil
}

// SetSysctl implements Kernel.
func (f *fakeKernel) SetSysctl(key, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("host", "sysctl"); err != nil {
		return err
	}
	f.sysctls[key] = value
	return nil
}

// OpenSandbox implements Kernel; any key is a namespace (see removeSandbox).
func (f *fakeKernel) OpenSandbox(key string) (netlink.NsFd, func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("host", "open sandbox"); err != nil {
		return 0, nil, err
	}
	f.next++
	fd := netlink.NsFd(f.next)
	f.fds[fd] = key
	return fd, func() {}, nil
}

// removeSandbox destroys a sandbox namespace: its veths go, and their peers with them.
func (f *fakeKernel) removeSandbox(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fd, k := range f.fds {
		if k == key {
			delete(f.fds, fd)
		}
	}
	for _, l := range slices.Clone(f.links) {
		if l.ns == key {
			f.removeLocked(l)
		}
	}
}

// DeleteGroup implements Kernel.
func (f *fakeKernel) DeleteGroup(group uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failLocked("host", "delete group"); err != nil {
		return err
	}
	for _, l := range slices.Clone(f.links) {
		if l.ns == "host" && l.group == group {
			f.removeLocked(l)
		}
	}
	return nil
}

// addHostLink adds a device as another program (or an earlier run) left it.
func (f *fakeKernel) addHostLink(kind, name, alias string, group uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := &fakeLink{ns: "host", name: name, kind: kind, alias: alias, group: group}
	if kind == "veth" {
		l.peer = &fakeLink{ns: "host", name: name + "p", kind: "veth", peer: l}
		_ = f.addLocked(l.peer)
	}
	if err := f.addLocked(l); err != nil {
		panic(err)
	}
}

var tombstoneRE = regexp.MustCompile(`\bpv-[0-9a-f]{11}\b`)

// Dump prints every device, address and sysctl, sorted. Tombstone names are random:
// they print as pv-TOMBSTONE.
func (f *fakeKernel) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lines []string
	for _, l := range f.links {
		lines = append(lines, l.ns+" "+l.describe())
		for _, a := range l.addrs {
			lines = append(lines, l.ns+" "+l.name+" inet "+a)
		}
	}
	for k, v := range f.sysctls {
		lines = append(lines, "sysctl "+k+"="+v)
	}
	for i, s := range lines {
		lines[i] = tombstoneRE.ReplaceAllString(s, "pv-TOMBSTONE")
	}
	slices.Sort(lines)
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

func (l *fakeLink) describe() string {
	s := []string{l.name, l.kind}
	if l.peer != nil {
		s = append(s, "peer="+l.peer.ns+"/"+l.peer.name)
	}
	if l.master != nil {
		s = append(s, "master="+l.master.name)
	}
	if l.mac != nil {
		s = append(s, "mac="+l.mac.String())
	}
	if l.mtu != 0 {
		s = append(s, fmt.Sprint("mtu=", l.mtu))
	}
	if l.alias != "" {
		s = append(s, "alias="+l.alias)
	}
	if l.group != 0 {
		s = append(s, fmt.Sprintf("group=%#x", l.group))
	}
	for _, f := range []struct {
		on   bool
		name string
	}{{l.isolated, "isolated"}, {l.hairpin, "hairpin"}, {l.noAddrGen, "addrgenmode=none"}, {l.up, "up"}} {
		if f.on {
			s = append(s, f.name)
		}
	}
	return strings.Join(s, " ")
}

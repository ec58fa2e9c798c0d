package subif

import (
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Fake is an in-memory Kernel for tests. Unsupported lists the link kinds its
// "kernel" lacks (as this machine's lacks "ipvlan" and "vlan"). Dump prints its state.
type Fake struct {
	Unsupported map[string]bool

	mu      sync.Mutex // guards the fields below
	links   map[string]map[string]netlink.Link
	sysctls map[string]string
	fds     map[netlink.NsFd]string
	next    int
}

// NewFake returns a fake kernel whose host has the given links (veth ends, e.g. "eth1").
func NewFake(hostLinks ...string) *Fake {
	f := &Fake{Unsupported: map[string]bool{}, links: map[string]map[string]netlink.Link{},
		sysctls: map[string]string{}, fds: map[netlink.NsFd]string{}, next: 1}
	for _, name := range hostLinks {
		f.put("", &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name}})
	}
	return f
}

func (f *Fake) put(ns string, l netlink.Link) {
	if f.links[ns] == nil {
		f.links[ns] = map[string]netlink.Link{}
	}
	f.next++
	l.Attrs().Index = f.next
	f.links[ns][l.Attrs().Name] = l
}

// LinkByName implements Kernel.
func (f *Fake) LinkByName(ns, name string) (netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l := f.links[ns][name]; l != nil {
		return l, nil
	}
	return nil, netlink.LinkNotFoundError{}
}

// LinkAdd implements Kernel.
func (f *Fake) LinkAdd(l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Unsupported[l.Type()] {
		return unix.EOPNOTSUPP
	}
	ns := ""
	if fd, ok := l.Attrs().Namespace.(netlink.NsFd); ok {
		ns = f.fds[fd]
	}
	if a := l.Attrs(); a.ParentIndex != 0 && f.byIndexLocked(a.ParentIndex) == nil {
		return unix.ENODEV
	}
	if f.links[ns][l.Attrs().Name] != nil {
		return unix.EEXIST
	}
	f.put(ns, l)
	if v, ok := l.(*netlink.Veth); ok {
		f.put(ns, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: v.PeerName}, PeerName: v.Name})
	}
	return nil
}

func (f *Fake) byIndexLocked(i int) netlink.Link {
	for _, l := range f.links[""] {
		if l.Attrs().Index == i {
			return l
		}
	}
	return nil
}

// LinkDel implements Kernel (a veth takes its peer with it).
func (f *Fake) LinkDel(ns string, l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := l.Attrs().Name
	cur := f.links[ns][name]
	if cur == nil {
		return unix.ENODEV
	}
	f.forgetLocked(ns, name)
	if v, ok := cur.(*netlink.Veth); ok {
		f.forgetLocked(ns, v.PeerName)
	}
	return nil
}

// forgetLocked drops a link and, as the kernel does, its per-device sysctls.
func (f *Fake) forgetLocked(ns, name string) {
	delete(f.links[ns], name)
	for k := range f.sysctls {
		if ns == "" && strings.Contains(k, "/"+name+"/") {
			delete(f.sysctls, k)
		}
	}
}

// LinkSetUp implements Kernel.
func (f *Fake) LinkSetUp(l netlink.Link) error {
	return f.modify(l, func(a *netlink.LinkAttrs) { a.Flags |= net.FlagUp })
}

// LinkSetAlias implements Kernel.
func (f *Fake) LinkSetAlias(l netlink.Link, alias string) error {
	return f.modify(l, func(a *netlink.LinkAttrs) { a.Alias = alias })
}

func (f *Fake) modify(l netlink.Link, fn func(*netlink.LinkAttrs)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := f.links[""][l.Attrs().Name]
	if cur == nil {
		return unix.ENODEV
	}
	fn(cur.Attrs())
	return nil
}

// LinkList implements Kernel.
func (f *Fake) LinkList() ([]netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []netlink.Link
	for _, l := range f.links[""] {
		out = append(out, l)
	}
	return out, nil
}

// SetSysctl implements Kernel.
func (f *Fake) SetSysctl(key, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sysctls[key] = value
	return nil
}

// OpenSandbox implements Kernel.
func (f *Fake) OpenSandbox(key string) (netlink.NsFd, func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	fd := netlink.NsFd(f.next)
	f.fds[fd] = key
	return fd, func() {}, nil
}

// Dump prints every link as "namespace name type details" and every sysctl set,
// sorted, one a line.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lines []string
	for ns, links := range f.links {
		if ns == "" {
			ns = "host"
		}
		for _, l := range links {
			lines = append(lines, ns+" "+f.describeLocked(l))
		}
	}
	for k, v := range f.sysctls {
		lines = append(lines, "sysctl "+k+"="+v)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

func (f *Fake) describeLocked(l netlink.Link) string {
	a := l.Attrs()
	s := []string{a.Name, l.Type()}
	if p := f.byIndexLocked(a.ParentIndex); p != nil {
		s = append(s, "parent="+p.Attrs().Name)
	}
	switch v := l.(type) {
	case *netlink.Macvlan:
		s = append(s, "mode="+macvlanModes[v.Mode])
	case *netlink.IPVlan:
		s = append(s, "mode="+ipvlanModes[v.Mode])
	case *netlink.Vlan:
		s = append(s, fmt.Sprint("id=", v.VlanId))
	case *netlink.Veth:
		s = append(s, "peer="+v.PeerName)
	}
	if a.HardwareAddr != nil {
		s = append(s, "mac="+a.HardwareAddr.String())
	}
	if a.MTU != 0 {
		s = append(s, fmt.Sprint("mtu=", a.MTU))
	}
	if a.Alias != "" {
		s = append(s, "alias="+a.Alias)
	}
	if a.Flags&net.FlagUp != 0 {
		s = append(s, "up")
	}
	return strings.Join(s, " ")
}

var macvlanModes = map[netlink.MacvlanMode]string{netlink.MACVLAN_MODE_BRIDGE: "bridge",
	netlink.MACVLAN_MODE_PRIVATE: "private", netlink.MACVLAN_MODE_VEPA: "vepa", netlink.MACVLAN_MODE_PASSTHRU: "passthru"}

var ipvlanModes = map[netlink.IPVlanMode]string{netlink.IPVLAN_MODE_L2: "l2", netlink.IPVLAN_MODE_L3: "l3",
	netlink.IPVLAN_MODE_L3S: "l3s"}

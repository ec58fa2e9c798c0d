package subif

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/netns"
)

// Kernel is the seam between the drivers and the kernel. ns names a namespace: "" is
// the host, anything else a sandbox key (the path of its namespace).
type Kernel interface {
	LinkByName(ns, name string) (netlink.Link, error)
	// LinkAdd creates l through the host namespace: lower devices (ParentIndex) are
	// the host's; a Namespace attribute (from OpenSandbox) creates it in a sandbox.
	LinkAdd(l netlink.Link) error
	LinkDel(ns string, l netlink.Link) error
	LinkSetUp(l netlink.Link) error
	LinkSetAlias(l netlink.Link, alias string) error
	LinkList() ([]netlink.Link, error)
	SetSysctl(key, value string) error
	// OpenSandbox returns a namespace handle for a Namespace attribute.
	OpenSandbox(key string) (netlink.NsFd, func(), error)
}

// HostKernel is Kernel on real namespaces; host is the namespace pier treats as the host.
type HostKernel struct{ Host *netns.Namespace }

var _ Kernel = HostKernel{}

// LinkByName implements Kernel.
func (k HostKernel) LinkByName(ns, name string) (l netlink.Link, err error) {
	err = k.In(ns, func(h *netlink.Handle) (err error) { l, err = h.LinkByName(name); return })
	return l, err
}

// LinkAdd implements Kernel.
func (k HostKernel) LinkAdd(l netlink.Link) error { return k.Host.NL.LinkAdd(l) }

// LinkDel implements Kernel.
func (k HostKernel) LinkDel(ns string, l netlink.Link) error {
	return k.In(ns, func(h *netlink.Handle) error { return h.LinkDel(l) })
}

// LinkSetUp implements Kernel.
func (k HostKernel) LinkSetUp(l netlink.Link) error { return k.Host.NL.LinkSetUp(l) }

// LinkSetAlias implements Kernel.
func (k HostKernel) LinkSetAlias(l netlink.Link, alias string) error {
	return k.Host.NL.LinkSetAlias(l, alias)
}

// LinkList implements Kernel.
func (k HostKernel) LinkList() ([]netlink.Link, error) { return netns.Dump(k.Host.NL.LinkList) }

// SetSysctl implements Kernel.
func (k HostKernel) SetSysctl(key, value string) error { return k.Host.SetSysctl(key, value) }

// OpenSandbox implements Kernel.
func (k HostKernel) OpenSandbox(key string) (netlink.NsFd, func(), error) {
	h, err := vns.GetFromPath(key)
	if err != nil {
		return 0, nil, fmt.Errorf("opening sandbox namespace %s: %w", key, err)
	}
	return netlink.NsFd(int(h)), func() { h.Close() }, nil
}

// In runs fn with a netlink handle in namespace ns ("" is the host).
func (k HostKernel) In(ns string, fn func(*netlink.Handle) error) error {
	if ns == "" {
		return fn(k.Host.NL)
	}
	sb, err := netns.Open(ns)
	if err != nil {
		return err
	}
	defer sb.Close()
	return fn(sb.NL)
}

// isUnsupported reports whether err says the kernel lacks a link kind.
func isUnsupported(err error) bool {
	if errors.Is(err, unix.EOPNOTSUPP) {
		return true
	}
	s := strings.ToLower(fmt.Sprint(err))
	return strings.Contains(s, "unknown link kind") || strings.Contains(s, "unknown device type")
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

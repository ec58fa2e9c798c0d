package wg

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/netns"
)

// errNoKernelWireGuard marks a kernel without WireGuard (CONFIG_WIREGUARD unset or
// the module not loadable): Auto falls back to userspace on it.
var errNoKernelWireGuard = errors.New("kernel has no wireguard (CONFIG_WIREGUARD, module wireguard)")

// kernel is the kernel's WireGuard. The link is created in the socket namespace and
// then moved into the tunnel namespace: a WireGuard device opens its UDP socket in the
// namespace it was created in, wherever it moves afterwards
// (https://www.wireguard.com/netns/).
type kernel struct {
	client *wgctrl.Client // a generic netlink socket inside the tunnel namespace
	name   string
	tunNS  *netns.Namespace
}

func openKernel(ctx context.Context, o Options, tunNS, sockNS *netns.Namespace) (backend, error) {
	link := &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: o.Name, MTU: o.MTU}}
	if err := sockNS.NL.LinkAdd(link); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) {
			return nil, errdefs.Wrap(errdefs.KindUnavailable, fmt.Errorf("creating wireguard link %s: %w: %w", o.Name, errNoKernelWireGuard, err))
		}
		return nil, fmt.Errorf("creating wireguard link %s: %w", o.Name, err)
	}
	if err := sockNS.NL.LinkSetNsFd(link, int(tunNS.Handle)); err != nil {
		_ = sockNS.NL.LinkDel(link)
		return nil, fmt.Errorf("moving wireguard link %s into %s: %w", o.Name, tunNS.Path, err)
	}
	k := &kernel{name: o.Name, tunNS: tunNS}
	err := tunNS.Do(func() error {
		var err error
		k.client, err = wgctrl.New()
		return err
	})
	if err != nil {
		_ = k.delLink()
		return nil, fmt.Errorf("opening wgctrl in %s: %w", tunNS.Path, err)
	}
	return k, nil
}

func (k *kernel) apply(c change) error {
	for _, cfg := range kernelConfigs(c) {
		if err := k.client.ConfigureDevice(k.name, cfg); err != nil {
			return err
		}
	}
	return nil
}

func (k *kernel) status() ([]PeerStatus, error) {
	d, err := k.client.Device(k.name)
	if err != nil {
		return nil, err
	}
	return kernelStatus(d), nil
}

func (k *kernel) close() error { return errors.Join(k.delLink(), k.client.Close()) }

func (k *kernel) delLink() error {
	l, err := k.tunNS.NL.LinkByName(k.name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("finding wireguard link %s: %w", k.name, err)
	}
	if err := k.tunNS.NL.LinkDel(l); err != nil {
		return fmt.Errorf("deleting wireguard link %s: %w", k.name, err)
	}
	return nil
}

package firewall

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"

	"github.com/piernet/pier/errdefs"
)

// PortBinding is one published port: new connections to HostIP:HostPort
// over Proto are DNAT'd to ContainerIP:ContainerPort. HostIP 0.0.0.0 or ::
// means every local address of that family. Loopback host addresses are
// accepted but not programmed: the kernel cannot DNAT them (portmap.Proxy
// serves them).
type PortBinding struct {
	HostIP        netip.Addr
	HostPort      uint16
	Proto         string // "tcp", "udp" or "sctp"
	ContainerIP   netip.Addr
	ContainerPort uint16
}

// String formats b as "0.0.0.0:8080/tcp->172.17.0.2:80".
func (b PortBinding) String() string {
	return fmt.Sprintf("%s/%s->%s", netip.AddrPortFrom(b.HostIP, b.HostPort), b.Proto,
		netip.AddrPortFrom(b.ContainerIP, b.ContainerPort))
}

// protoNumbers are the protocols that can be published.
var protoNumbers = map[string]uint8{"tcp": 6, "udp": 17, "sctp": 132}

// portKey identifies a published host port: the key of a port map element.
type portKey struct {
	hostIP netip.Addr
	proto  string
	port   uint16
}

func (b PortBinding) key() portKey { return portKey{b.HostIP, b.Proto, b.HostPort} }

// normalizePorts validates owner's bindings and returns them sorted,
// without duplicates and without loopback host addresses.
func normalizePorts(owner string, in []PortBinding) ([]PortBinding, error) {
	if err := validOwner(owner); err != nil {
		return nil, err
	}
	out := make([]PortBinding, 0, len(in))
	for _, b := range in {
		b.HostIP, b.ContainerIP = b.HostIP.Unmap(), b.ContainerIP.Unmap()
		if err := validPort(b); err != nil {
			return nil, err
		}
		if !b.HostIP.IsLoopback() {
			out = append(out, b)
		}
	}
	slices.SortFunc(out, comparePorts)
	out = slices.Compact(out)
	for i := 1; i < len(out); i++ {
		if out[i].key() == out[i-1].key() {
			return nil, errdefs.InvalidArgument("host port %s/%s is published twice, to %s and %s",
				netip.AddrPortFrom(out[i].HostIP, out[i].HostPort), out[i].Proto,
				netip.AddrPortFrom(out[i-1].ContainerIP, out[i-1].ContainerPort),
				netip.AddrPortFrom(out[i].ContainerIP, out[i].ContainerPort))
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func validOwner(owner string) error {
	if owner == "" || len(owner) > maxComment || strings.ContainsRune(owner, 0) {
		return errdefs.InvalidArgument("invalid owner %q: 1-%d bytes, no NUL", owner, maxComment)
	}
	return nil
}

func validPort(b PortBinding) error {
	switch {
	case protoNumbers[b.Proto] == 0:
		return errdefs.InvalidArgument("invalid port binding %s: protocol must be tcp, udp or sctp", b)
	case !b.HostIP.IsValid() || !b.ContainerIP.IsValid() || b.HostIP.Zone() != "" || b.ContainerIP.Zone() != "":
		return errdefs.InvalidArgument("invalid port binding %s: host and container address required, without zone", b)
	case b.HostIP.Is4() != b.ContainerIP.Is4():
		return errdefs.InvalidArgument("invalid port binding %s: host and container address of different families", b)
	case b.HostPort == 0 || b.ContainerPort == 0 || b.ContainerIP.IsUnspecified():
		return errdefs.InvalidArgument("invalid port binding %s: ports and container address must be set", b)
	}
	return nil
}

func comparePorts(a, b PortBinding) int {
	return cmp.Or(a.HostIP.Compare(b.HostIP), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.HostPort, b.HostPort),
		a.ContainerIP.Compare(b.ContainerIP), cmp.Compare(a.ContainerPort, b.ContainerPort))
}

// SetPorts makes owner's published ports exactly bindings, in one batch of
// map element changes whose size depends only on owner's bindings. A host
// port another owner publishes fails with a Conflict in Docker's words. On
// error nothing changes. Afterwards it flushes the conntrack entries of
// UDP ports that were added, removed or remapped, so that no client keeps
// talking to the old target (or, unpublished, to nothing).
func (f *Firewall) SetPorts(ctx context.Context, owner string, bindings []PortBinding) error {
	next, err := normalizePorts(owner, bindings)
	if err == nil {
		err = f.setPorts(ctx, owner, next)
	}
	if err != nil {
		return fmt.Errorf("publishing ports of %s: %w", owner, err)
	}
	return nil
}

// RemovePorts unpublishes every port of owner in one batch and flushes the
// conntrack entries of its UDP ports. Removing an unknown owner is a no-op.
func (f *Firewall) RemovePorts(ctx context.Context, owner string) error {
	if err := f.setPorts(ctx, owner, nil); err != nil {
		return fmt.Errorf("unpublishing ports of %s: %w", owner, err)
	}
	return nil
}

func (f *Firewall) setPorts(ctx context.Context, owner string, next []PortBinding) error {
	f.mu.Lock()
	stale, err := f.setPortsLocked(ctx, owner, next)
	var ct conntracker
	var cterr error
	if err == nil && len(stale) > 0 {
		ct, cterr = f.openConntrackLocked()
	}
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if cterr != nil {
		f.log.Warn("cannot flush conntrack entries of changed UDP ports", "owner", owner, "err", cterr)
	} else if ct != nil {
		f.flushConntrack(owner, ct, stale) // a conntrack dump: outside the lock
	}
	return nil
}

// flushConntrack deletes the conntrack entries of stale UDP bindings. A
// failure is logged, not returned: the ports are published, and a stale
// entry expires by itself once its client pauses for 30 s.
func (f *Firewall) flushConntrack(owner string, ct conntracker, stale []PortBinding) {
	defer ct.Close()
	if n, err := ct.DeleteUDP(stale); err != nil {
		f.log.Warn("flushing conntrack entries of changed UDP ports", "owner", owner, "err", err)
	} else if n > 0 {
		f.log.Debug("flushed conntrack entries of changed UDP ports", "owner", owner, "entries", n)
	}
}

// setPortsLocked switches owner to next and programs the change; it
// returns the UDP bindings whose conntrack entries are stale.
func (f *Firewall) setPortsLocked(ctx context.Context, owner string, next []PortBinding) ([]PortBinding, error) {
	if err := f.checkLocked(ctx); err != nil {
		return nil, err
	}
	prev := f.ports[owner]
	if slices.Equal(prev, next) {
		return nil, nil
	}
	for _, b := range next {
		if o, ok := f.portOwner[b.key()]; ok && o != owner {
			return nil, errdefs.Conflict("Bind for %s failed: port is already allocated", netip.AddrPortFrom(b.HostIP, b.HostPort))
		}
	}
	changes := diff(portContents(owner, prev), portContents(owner, next))
	f.replacePortsLocked(owner, prev, next)
	if err := f.programLocked(changes); err != nil {
		f.replacePortsLocked(owner, next, prev)
		return nil, err
	}
	return changedUDP(prev, next), nil
}

// replacePortsLocked switches owner from prev to next, keeping the index
// of host ports in step.
func (f *Firewall) replacePortsLocked(owner string, prev, next []PortBinding) {
	for _, b := range prev {
		delete(f.portOwner, b.key())
	}
	for _, b := range next {
		f.portOwner[b.key()] = owner
	}
	if len(next) == 0 {
		delete(f.ports, owner)
	} else {
		f.ports[owner] = next
	}
}

// changedUDP returns the UDP bindings in prev or next but not in both.
func changedUDP(prev, next []PortBinding) []PortBinding {
	var out []PortBinding
	for _, pair := range [][2][]PortBinding{{prev, next}, {next, prev}} {
		for _, b := range pair[0] {
			if b.Proto == "udp" && !slices.Contains(pair[1], b) {
				out = append(out, b)
			}
		}
	}
	return out
}

// portContents returns the map elements of owner's bindings.
func portContents(owner string, bs []PortBinding) contents {
	c := newContents()
	c.addPorts(owner, bs)
	return c
}

// addPorts adds the map elements of owner's bindings.
func (c contents) addPorts(owner string, bs []PortBinding) {
	for _, b := range bs {
		d, e := portElement(b, owner)
		c.add(d, e)
	}
}

// portElement returns b's map and element. Keys and values are
// concatenations, each field padded to 4 bytes: address, protocol number,
// port in network byte order.
func portElement(b PortBinding, owner string) (setDef, element) {
	proto, port := []byte{protoNumbers[b.Proto], 0, 0, 0}, []byte{byte(b.HostPort >> 8), byte(b.HostPort), 0, 0}
	val := append(b.ContainerIP.AsSlice(), byte(b.ContainerPort>>8), byte(b.ContainerPort), 0, 0)
	e := element{
		key:     b.Proto + " . " + strconv.Itoa(int(b.HostPort)),
		val:     b.ContainerIP.String() + " . " + strconv.Itoa(int(b.ContainerPort)),
		comment: owner,
		enc:     []nftables.SetElement{{Key: slices.Concat(proto, port), Val: val}},
	}
	d := map[bool]setDef{true: setPortsAny4, false: setPortsAny6}[b.HostIP.Is4()]
	if !b.HostIP.IsUnspecified() {
		e.key = b.HostIP.String() + " . " + e.key
		e.enc[0].Key = slices.Concat(b.HostIP.AsSlice(), proto, port)
		d = map[bool]setDef{true: setPorts4, false: setPorts6}[b.HostIP.Is4()]
	}
	return d, e
}

// clonePorts returns a deep copy of ports.
func clonePorts(ports map[string][]PortBinding) map[string][]PortBinding {
	if len(ports) == 0 {
		return nil
	}
	out := make(map[string][]PortBinding, len(ports))
	for o, bs := range ports {
		out[o] = slices.Clone(bs)
	}
	return out
}

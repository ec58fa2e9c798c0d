package wg

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/piernet/pier/errdefs"
)

// change is one step of configuration, rendered for either backend: UAPI text for
// wireguard-go (uapiText), a wgtypes.Config for the kernel (kernelConfig). Peers not
// named in it are left alone, so their sessions survive. Peers are set before others
// are removed: a peer whose key changed gets the AllowedIPs of its old entry in one
// move, so no packet meanwhile finds no peer (and is dropped) while the old entry
// stops.
type change struct {
	privateKey *Key
	listenPort int    // 0: unchanged
	remove     []Key  // peers to drop
	set        []Peer // peers to add or update; their AllowedIPs replace the old ones
	// kick are peers (with a keepalive) to send a keepalive to at once, after the
	// rest of the change: with no session, that starts a handshake now (turning a
	// keepalive on sends one, in wireguard-go and the kernel alike).
	kick []Peer
}

func (c change) empty() bool {
	return c.privateKey == nil && c.listenPort == 0 && len(c.remove) == 0 && len(c.set) == 0 && len(c.kick) == 0
}

// normalize returns p with its AllowedIPs masked, sorted and deduplicated.
func normalize(p Peer) Peer {
	ips := make([]netip.Prefix, len(p.AllowedIPs))
	for i, a := range p.AllowedIPs {
		ips[i] = a.Masked()
	}
	slices.SortFunc(ips, comparePrefix)
	p.AllowedIPs = slices.Compact(ips)
	return p
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func samePeer(a, b Peer) bool {
	return a.PublicKey == b.PublicKey && a.Endpoint == b.Endpoint && a.Keepalive == b.Keepalive &&
		slices.Equal(a.AllowedIPs, b.AllowedIPs)
}

// validatePeers checks a desired peer set and returns it normalized, keyed by public
// key. self is this side's public key, which no peer may have.
func validatePeers(self Key, peers []Peer) (map[Key]Peer, error) {
	out := make(map[Key]Peer, len(peers))
	owner := map[netip.Prefix]Key{}
	for _, p := range peers {
		p = normalize(p)
		switch {
		case p.PublicKey.IsZero():
			return nil, errdefs.InvalidArgument("wireguard peer without a public key")
		case p.PublicKey == self:
			return nil, errdefs.InvalidArgument("wireguard peer %s is this tunnel's own key", p.PublicKey)
		case !p.Endpoint.IsValid():
			return nil, errdefs.InvalidArgument("wireguard peer %s has no endpoint", p.PublicKey)
		case p.Keepalive < 0 || p.Keepalive > 65535*time.Second:
			return nil, errdefs.InvalidArgument("wireguard peer %s: keepalive %v out of range", p.PublicKey, p.Keepalive)
		}
		if _, dup := out[p.PublicKey]; dup {
			return nil, errdefs.InvalidArgument("wireguard peer %s given twice", p.PublicKey)
		}
		for _, a := range p.AllowedIPs {
			if !a.IsValid() {
				return nil, errdefs.InvalidArgument("wireguard peer %s: invalid allowed IP", p.PublicKey)
			}
			if o, dup := owner[a]; dup {
				return nil, errdefs.InvalidArgument("allowed IP %s given to two wireguard peers (%s and %s)", a, o, p.PublicKey)
			}
			owner[a] = p.PublicKey
		}
		out[p.PublicKey] = p
	}
	return out, nil
}

// diffPeers returns the change turning the peers cur into want (both normalized):
// unchanged peers are not named, so they keep their sessions.
func diffPeers(cur, want map[Key]Peer) change {
	var c change
	for k := range cur {
		if _, ok := want[k]; !ok {
			c.remove = append(c.remove, k)
		}
	}
	for k, p := range want {
		if old, ok := cur[k]; !ok || !samePeer(old, p) {
			c.set = append(c.set, p)
		}
	}
	slices.SortFunc(c.remove, func(a, b Key) int { return strings.Compare(a.String(), b.String()) })
	slices.SortFunc(c.set, func(a, b Peer) int { return strings.Compare(a.PublicKey.String(), b.PublicKey.String()) })
	return c
}

// routesOf returns the AllowedIPs of peers, the routes the tunnel namespace needs.
func routesOf(peers map[Key]Peer) map[netip.Prefix]bool {
	out := map[netip.Prefix]bool{}
	for _, p := range peers {
		for _, a := range p.AllowedIPs {
			out[a] = true
		}
	}
	return out
}

// diffRoutes returns the routes to add and to delete to go from cur to want, sorted.
func diffRoutes(cur, want map[netip.Prefix]bool) (add, del []netip.Prefix) {
	for p := range want {
		if !cur[p] {
			add = append(add, p)
		}
	}
	for p := range cur {
		if !want[p] {
			del = append(del, p)
		}
	}
	slices.SortFunc(add, comparePrefix)
	slices.SortFunc(del, comparePrefix)
	return add, del
}

// uapiText renders c in wireguard-go's configuration protocol (the "set=1" body of
// https://www.wireguard.com/xplatform/), keys in hex.
func uapiText(c change) string {
	var b strings.Builder
	if c.privateKey != nil {
		fmt.Fprintf(&b, "private_key=%s\n", hex.EncodeToString(c.privateKey[:]))
	}
	if c.listenPort != 0 {
		fmt.Fprintf(&b, "listen_port=%d\n", c.listenPort)
	}
	for _, p := range c.set {
		fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\npersistent_keepalive_interval=%d\nreplace_allowed_ips=true\n",
			hex.EncodeToString(p.PublicKey[:]), p.Endpoint, int(p.Keepalive/time.Second))
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a)
		}
	}
	for _, k := range c.remove {
		fmt.Fprintf(&b, "public_key=%s\nremove=true\n", hex.EncodeToString(k[:]))
	}
	for _, p := range c.kick {
		fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\npersistent_keepalive_interval=0\npersistent_keepalive_interval=%d\n",
			hex.EncodeToString(p.PublicKey[:]), int(p.Keepalive/time.Second))
	}
	return b.String()
}

// kernelConfigs renders c for the kernel's WireGuard (wgctrl): one configuration,
// or two when c kicks peers (their keepalive off in the first, on again in the
// second, which sends one).
func kernelConfigs(c change) []wgtypes.Config {
	cfg := kernelConfig(c)
	if len(c.kick) == 0 {
		return []wgtypes.Config{cfg}
	}
	var on wgtypes.Config
	for _, p := range c.kick {
		off, ka := time.Duration(0), p.Keepalive
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: wgtypes.Key(p.PublicKey), UpdateOnly: true, PersistentKeepaliveInterval: &off})
		on.Peers = append(on.Peers, wgtypes.PeerConfig{PublicKey: wgtypes.Key(p.PublicKey), UpdateOnly: true, PersistentKeepaliveInterval: &ka})
	}
	return []wgtypes.Config{cfg, on}
}

// kernelConfig renders c, kicks aside, for the kernel's WireGuard (wgctrl).
func kernelConfig(c change) wgtypes.Config {
	var cfg wgtypes.Config
	if c.privateKey != nil {
		k := wgtypes.Key(*c.privateKey)
		cfg.PrivateKey = &k
	}
	if c.listenPort != 0 {
		port := c.listenPort
		cfg.ListenPort = &port
	}
	for _, p := range c.set {
		ka := p.Keepalive
		pc := wgtypes.PeerConfig{
			PublicKey:                   wgtypes.Key(p.PublicKey),
			Endpoint:                    net.UDPAddrFromAddrPort(p.Endpoint),
			PersistentKeepaliveInterval: &ka,
			ReplaceAllowedIPs:           true,
		}
		for _, a := range p.AllowedIPs {
			pc.AllowedIPs = append(pc.AllowedIPs, prefixNet(a))
		}
		cfg.Peers = append(cfg.Peers, pc)
	}
	for _, k := range c.remove {
		cfg.Peers = append(cfg.Peers, wgtypes.PeerConfig{PublicKey: wgtypes.Key(k), Remove: true})
	}
	return cfg
}

func prefixNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// kernelStatus turns the kernel's view of the device into PeerStatus values.
func kernelStatus(d *wgtypes.Device) []PeerStatus {
	out := make([]PeerStatus, 0, len(d.Peers))
	for _, p := range d.Peers {
		s := PeerStatus{Peer: Peer{PublicKey: Key(p.PublicKey), Keepalive: p.PersistentKeepaliveInterval},
			LastHandshake: p.LastHandshakeTime, RxBytes: p.ReceiveBytes, TxBytes: p.TransmitBytes}
		if p.Endpoint != nil {
			s.Endpoint = p.Endpoint.AddrPort()
			s.Endpoint = netip.AddrPortFrom(s.Endpoint.Addr().Unmap(), s.Endpoint.Port())
		}
		for _, a := range p.AllowedIPs {
			if pf, ok := netipPrefix(a); ok {
				s.AllowedIPs = append(s.AllowedIPs, pf)
			}
		}
		if s.LastHandshake.Unix() == 0 {
			s.LastHandshake = time.Time{}
		}
		out = append(out, s)
	}
	return sortStatus(out)
}

func netipPrefix(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	if len(n.IP) == net.IPv4len || a.Is4In6() {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, ones), ok
}

func sortStatus(s []PeerStatus) []PeerStatus {
	for i := range s {
		s[i].Peer = normalize(s[i].Peer)
	}
	slices.SortFunc(s, func(a, b PeerStatus) int { return strings.Compare(a.PublicKey.String(), b.PublicKey.String()) })
	return s
}

// parseUAPI parses wireguard-go's "get=1" answer into PeerStatus values.
func parseUAPI(text string) ([]PeerStatus, error) {
	var out []PeerStatus
	var cur *PeerStatus
	var sec, nsec int64
	flush := func() {
		if cur != nil {
			if sec != 0 || nsec != 0 {
				cur.LastHandshake = time.Unix(sec, nsec)
			}
			out = append(out, *cur)
		}
		sec, nsec = 0, 0
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if key == "public_key" {
			flush()
			k, err := hexKey(val)
			if err != nil {
				return nil, err
			}
			cur = &PeerStatus{Peer: Peer{PublicKey: k}}
			continue
		}
		if cur == nil {
			continue // device-level fields
		}
		if err := setStatusField(cur, key, val, &sec, &nsec); err != nil {
			return nil, fmt.Errorf("parsing wireguard status %s=%s: %w", key, val, err)
		}
	}
	flush()
	return sortStatus(out), sc.Err()
}

func setStatusField(s *PeerStatus, key, val string, sec, nsec *int64) error {
	var err error
	switch key {
	case "endpoint":
		s.Endpoint, err = netip.ParseAddrPort(val)
	case "allowed_ip":
		var p netip.Prefix
		if p, err = netip.ParsePrefix(val); err == nil {
			s.AllowedIPs = append(s.AllowedIPs, p)
		}
	case "persistent_keepalive_interval":
		var n int
		n, err = strconv.Atoi(val)
		s.Keepalive = time.Duration(n) * time.Second
	case "last_handshake_time_sec":
		*sec, err = strconv.ParseInt(val, 10, 64)
	case "last_handshake_time_nsec":
		*nsec, err = strconv.ParseInt(val, 10, 64)
	case "rx_bytes":
		s.RxBytes, err = strconv.ParseInt(val, 10, 64)
	case "tx_bytes":
		s.TxBytes, err = strconv.ParseInt(val, 10, 64)
	}
	return err
}

func hexKey(s string) (Key, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(Key{}) {
		return Key{}, fmt.Errorf("invalid hex key %q", s)
	}
	return Key(b), nil
}

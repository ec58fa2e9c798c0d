package wg

import (
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

const benchBytes = 64 << 20 // per iteration: one TCP stream

// BenchmarkTunnelTCP measures one TCP stream from A's tunnel namespace to B's through
// pier's tunnels (wireguard-go here). Compare with BenchmarkRawWireguardGo, run beside it.
func BenchmarkTunnelTCP(b *testing.B) {
	_, hs := newHosts(b, 2)
	mesh(b, hs[0], hs[1])
	benchStream(b, hs[0].tunNS, hs[1].tunNS, hs[1].addr)
}

// BenchmarkRawWireguardGo is the baseline: a wireguard-go pair built directly with the
// library in the hosts' own namespaces (TUN and sockets both there, no pier code),
// carrying the same stream between 198.51.100.1 and .2.
func BenchmarkRawWireguardGo(b *testing.B) {
	_, hs := newHosts(b, 2)
	keys := [2]Key{}
	for i := range keys {
		var err error
		if keys[i], err = GenerateKey(); err != nil {
			b.Fatal(err)
		}
	}
	inner := [2]netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")}
	for i, h := range hs {
		o := 1 - i
		cfg := fmt.Sprintf("private_key=%s\nlisten_port=51821\npublic_key=%s\nendpoint=%s:51821\nallowed_ip=%s/32\n",
			hex.EncodeToString(keys[i][:]), hex.EncodeToString(pub(keys[o])), hs[o].addr, inner[o])
		rawDevice(b, h.ns, cfg, inner[i], inner[o])
	}
	benchStream(b, hs[0].ns, hs[1].ns, inner[1])
}

func pub(k Key) []byte { p := k.Public(); return p[:] }

// rawDevice makes TUN "wgraw0" in ns with a wireguard-go device configured by cfg
// and brought up on a thread inside ns (so its sockets are made there), addressed
// self/32 with a route to peer.
func rawDevice(b *testing.B, ns *netns.Namespace, cfg string, self, peer netip.Addr) {
	var dev *device.Device
	var err error
	nstest.Do(b, ns.Handle, func() {
		var td tun.Device
		if td, err = tun.CreateTUN("wgraw0", DefaultMTU); err != nil {
			return
		}
		// nsBind: wireguard-go may re-open its sockets later from another goroutine;
		// they must still be made in ns, never in the machine's own namespace.
		dev = device.NewDevice(td, &nsBind{Bind: conn.NewStdNetBind(), ns: ns}, device.NewLogger(device.LogLevelSilent, ""))
		if err = dev.IpcSet(cfg); err == nil {
			err = dev.Up()
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(dev.Close)
	l, err := ns.NL.LinkByName("wgraw0")
	if err == nil {
		err = ns.NL.AddrAdd(l, &netlink.Addr{IPNet: ptr(prefixNet(netip.PrefixFrom(self, 32)))})
	}
	if err == nil {
		err = ns.NL.LinkSetUp(l)
	}
	if err == nil {
		err = ns.NL.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ptr(prefixNet(netip.PrefixFrom(peer, 32))), Scope: netlink.SCOPE_LINK})
	}
	if err != nil {
		b.Fatal(err)
	}
}

// benchStream sends benchBytes per iteration over one TCP connection from ns to a
// sink at dst:11 in dstNS and reports Gbit/s.
func benchStream(b *testing.B, ns, dstNS *netns.Namespace, dst netip.Addr) {
	netlab.Serve(b, dstNS, netip.AddrPortFrom(dst, 11).String(), func(c net.Conn) {
		defer c.Close()
		_, _ = io.Copy(io.Discard, c)
		_, _ = c.Write([]byte{1})
	})
	buf := make([]byte, 256<<10)
	b.SetBytes(benchBytes)
	start := time.Now()
	for b.Loop() {
		c, err := netlab.Dial(b, ns, "tcp4", netip.AddrPortFrom(dst, 11).String(), 10*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		for sent := 0; sent < benchBytes; sent += len(buf) {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		_ = c.(*net.TCPConn).CloseWrite()
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.ReportMetric(float64(b.N)*benchBytes*8/time.Since(start).Seconds()/1e9, "Gbit/s")
}

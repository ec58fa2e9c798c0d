package bench

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/moby/moby/api/types/network"

	"github.com/piernet/pier/wg"
)

// secNet is the encrypted overlay of the encrypted scenario (both systems).
const secNet = "bcsec"

var encNames = [3]string{"pier encrypted overlay", "Docker encrypted overlay", "raw wireguard-go"}

// scenEncrypted: one iperf3 stream host 1 → host 3 over each system's encrypted
// overlay, next to a hand-built wireguard-go tunnel.
func (c *cluster) scenEncrypted(ctx context.Context) *csection {
	secs := int(c.cfg.Tput.Seconds())
	var pr [3]endpointPair
	var errs [3]error
	mtu := 0
	pr[sysPier], mtu, errs[sysPier] = c.pierEncrypted(ctx)
	pr[sysDocker], errs[sysDocker] = c.dockerEncrypted(ctx)
	if mtu == 0 {
		mtu = 1390
	}
	pr[sysRaw], errs[sysRaw] = c.rawWireguard(ctx, mtu)
	sec := &csection{Title: "Encrypted overlay throughput", Unit: "Gbit/s",
		Intro: fmt.Sprintf("`iperf3 -c SERVER -t %d` (one stream) in a box on host 1 against `iperf3 -s` in a box on host 3 on an encrypted overlay (`docker network create -d overlay -o encrypted --attachable`; pier h1→h3 over WireGuard, wireguard-go in pierd; Docker d1→d3, IPsec ESP). Raw: the raw pair's two namespaces joined by wireguard-go devices made directly with the library (`pierbench probe wg-tunnel`, the same golang.zx2c4.com/wireguard version pierd embeds), carrying plain TCP (no VXLAN inside) on a TUN device with pier's sandbox MTU (%d), so both carry the same number of packets per byte. %d runs per system, rotating. Goal (issue 17): pier ≥ 0.9 × raw wireguard-go.", secs, mtu, c.cfg.NTput)}
	errs = c.iperfServers(pr, errs, "enc")
	samples, errs := c.iperfRounds(ctx, pr, errs, secs, 1)
	c.logf("encrypted: pier %.2f, Docker %.2f, raw wireguard-go %.2f Gbit/s", median(samples[0]), median(samples[1]), median(samples[2]))
	for k := range 3 {
		r := crow{Scenario: "1 stream", System: encNames[k], Samples: samples[k], Err: errs[k]}
		if k == sysPier {
			r.Ratio = ratioTo(samples[k], samples[sysRaw])
			if r.Ratio != "" {
				r.Ratio += " of raw"
			}
			r.Goal = "≥ 0.9 of raw: " + verdictOf(len(samples[k]) > 0 && len(samples[sysRaw]) > 0, median(samples[k]) >= 0.9*median(samples[sysRaw]))
		}
		sec.Rows = append(sec.Rows, r)
	}
	if c.docker != nil {
		for i, h := range c.docker.hosts {
			if lines := grepLog(h.p.log, "esp", "xfrm", "encrypt"); lines != "" {
				sec.Notes = append(sec.Notes, fmt.Sprintf("Docker: d%d's log mentions: %s", i+1, lines))
			}
		}
	}
	sec.Notes = append(sec.Notes, "pier's packets are VXLAN inside WireGuard (50 bytes more per packet than raw's plain TCP inside WireGuard) and cross the lab bridge; raw's cross one veth. Raw is the ceiling of userspace WireGuard on this machine.")
	return sec
}

// pierEncrypted creates the encrypted overlay and a box on h1 and h3 on it; it
// returns the pair and the boxes' MTU.
func (c *cluster) pierEncrypted(ctx context.Context) (endpointPair, int, error) {
	p := c.pier
	if _, err := p.clients[0].NetworkCreate(ctx, network.CreateRequest{Name: secNet, Driver: "overlay", Attachable: true, Options: map[string]string{"encrypted": ""}}); err != nil {
		return endpointPair{}, 0, fmt.Errorf("creating the encrypted overlay: %w", err)
	}
	cli, err := p.startBoxOn(ctx, 0, "bc-ecli", secNet)
	if err != nil {
		return endpointPair{}, 0, err
	}
	srv, err := p.startBoxOn(ctx, 2, "bc-esrv", secNet)
	if err != nil {
		return endpointPair{}, 0, err
	}
	mtu, err := mtuOf(ctx, cli, secNet)
	return endpointPair{name: "pier-enc", serverNS: srv.NetNS, client: cli.NetNS, serverIP: srv.IPs[secNet]}, mtu, err
}

// dockerEncrypted does the same on the swarm. On a kernel without ESP it is expected
// to fail somewhere: the error says where.
func (c *cluster) dockerEncrypted(ctx context.Context) (endpointPair, error) {
	if c.docker == nil {
		return endpointPair{}, errors.New("the Docker swarm did not start (see Problems)")
	}
	s := c.docker
	if _, err := s.docker(ctx, 0, "network", "create", "-d", "overlay", "-o", "encrypted", "--attachable", secNet); err != nil {
		return endpointPair{}, err
	}
	cli, err := s.startBoxOn(ctx, 0, "bc-ecli", secNet)
	if err != nil {
		return endpointPair{}, err
	}
	srv, err := s.startBoxOn(ctx, 2, "bc-esrv", secNet)
	if err != nil {
		return endpointPair{}, err
	}
	return endpointPair{name: "docker-enc", serverNS: srv.NetNS, client: cli.NetNS, serverIP: srv.IPs[secNet]}, nil
}

// rawWireguard runs a wireguard-go device in each namespace of the raw pair (peers
// at each other's veth address, port 51821) with 10.254.8.1/.2 on the TUN devices.
func (c *cluster) rawWireguard(ctx context.Context, mtu int) (endpointPair, error) {
	if c.raw == nil {
		return endpointPair{}, errors.New("the raw pair could not be built (see Problems)")
	}
	var keys [2]wg.Key
	for i := range keys {
		var err error
		if keys[i], err = wg.GenerateKey(); err != nil {
			return endpointPair{}, err
		}
	}
	sides := []struct{ ns, underlay, inner string }{{c.raw.a, "203.0.113.1", "10.254.8.1"}, {c.raw.b, "203.0.113.2", "10.254.8.2"}}
	for i, sd := range sides {
		o := sides[1-i]
		peer := keys[1-i].Public()
		cfg := fmt.Sprintf("private_key=%s\nlisten_port=51821\npublic_key=%s\nendpoint=%s:51821\nallowed_ip=%s/32\n",
			hex.EncodeToString(keys[i][:]), hex.EncodeToString(peer[:]), o.underlay, o.inner)
		file := filepath.Join(c.cfg.WorkDir, fmt.Sprintf("wgraw%d.conf", i))
		if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
			return endpointPair{}, err
		}
		if _, err := c.startHelper(startProc(fmt.Sprintf("wg-tunnel-%d", i), filepath.Join(c.cfg.WorkDir, fmt.Sprintf("wgraw%d.log", i)),
			"nsenter", "--net="+sd.ns, "--", c.cfg.Self, "probe", "wg-tunnel", "-config", file, "-mtu", strconv.Itoa(mtu))); err != nil {
			return endpointPair{}, err
		}
		if err := waitLink(ctx, sd.ns, "wgraw0", 10*time.Second); err != nil {
			return endpointPair{}, err
		}
		for _, args := range [][]string{
			{"addr", "add", sd.inner + "/32", "dev", "wgraw0"},
			{"link", "set", "wgraw0", "up"},
			{"route", "add", o.inner + "/32", "dev", "wgraw0"},
		} {
			if _, err := runIn(ctx, sd.ns, append([]string{"ip"}, args...)...); err != nil {
				return endpointPair{}, err
			}
		}
	}
	return endpointPair{name: "raw-wg", serverNS: c.raw.a, client: c.raw.b, serverIP: "10.254.8.1"}, nil
}

// waitLink polls until dev exists in the namespace at ns.
func waitLink(ctx context.Context, ns, dev string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := runIn(ctx, ns, "ip", "link", "show", "dev", dev)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s did not appear within %s: %w", dev, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// iperfServers starts `iperf3 -s` in the server namespace of every pair without an
// error and returns the errors with the servers' start failures added.
func (c *cluster) iperfServers(pr [3]endpointPair, errs [3]error, tag string) [3]error {
	for k := range 3 {
		if errs[k] != nil {
			continue
		}
		p := pr[k]
		_, errs[k] = c.startHelper(startProc("iperf3-"+tag+p.name, filepath.Join(c.cfg.WorkDir, "iperf3-"+tag+p.name+".log"),
			"nsenter", "--net="+p.serverNS, "--", "iperf3", "-s", "-B", p.serverIP))
	}
	return errs
}

// iperfRounds runs NTput iperf3 clients per pair, the pairs rotating.
func (c *cluster) iperfRounds(ctx context.Context, pr [3]endpointPair, errs [3]error, secs, streams int) ([3][]float64, [3]error) {
	var samples [3][]float64
	for i := range c.cfg.NTput {
		for j := range 3 {
			k := (i + j) % 3
			if errs[k] != nil || ctx.Err() != nil {
				continue
			}
			bps, err := iperfRun(ctx, pr[k], secs, streams)
			if err != nil {
				errs[k] = err
				continue
			}
			samples[k] = append(samples[k], bps/1e9)
		}
	}
	return samples, errs
}

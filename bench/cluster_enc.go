package bench

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/network"

	"github.com/piernet/pier/wg"
)

// secNet is the encrypted overlay of the encrypted scenario (both systems).
const secNet = "bcsec"

// The encrypted scenario's systems: pier, Docker, then the two raw tunnels.
const sysRawVX = 3

var encNames = []string{"pier encrypted overlay", "Docker encrypted overlay", "raw wireguard-go, plain TCP inside", "raw wireguard-go, VXLAN inside"}

// scenEncrypted: one iperf3 stream host 1 → host 3 over each system's encrypted
// overlay, next to hand-built wireguard-go tunnels.
func (c *cluster) scenEncrypted(ctx context.Context) *csection {
	secs := int(c.cfg.Tput.Seconds())
	pr := make([]endpointPair, 4)
	errs := make([]error, 4)
	mtu := 0
	pr[sysPier], mtu, errs[sysPier] = c.pierEncrypted(ctx)
	pr[sysDocker], errs[sysDocker] = c.dockerEncrypted(ctx)
	if mtu == 0 {
		mtu = 1390
	}
	pr[sysRaw], pr[sysRawVX], errs[sysRaw] = c.rawWireguard(ctx, mtu)
	errs[sysRawVX] = errs[sysRaw]
	sec := &csection{Title: "Encrypted overlay throughput", Unit: "Gbit/s",
		Intro: fmt.Sprintf("`iperf3 -c SERVER -t %d` (one stream) in a box on host 1 against `iperf3 -s` in a box on host 3 on an encrypted overlay (`docker network create -d overlay -o encrypted --attachable`; pier h1→h3: VXLAN inside WireGuard, wireguard-go in pierd; Docker d1→d3: VXLAN inside IPsec ESP). Raw: the raw pair's two namespaces joined by wireguard-go devices made directly with the library (`pierbench probe wg-tunnel`: the golang.zx2c4.com/wireguard version pierd embeds, TUN MTU %d, UDP 51821), carrying either plain TCP (route MTU %d, pier's sandbox MTU) or a VXLAN device of MTU %d over the tunnel addresses — the second is pier's packet shape without pier. %d runs per system, rotating. Goal (issue 17): pier ≥ 0.9 × raw wireguard-go.", secs, mtu+50, mtu, mtu, c.cfg.NTput)}
	errs = c.iperfServers(pr, errs, "enc")
	samples, errs := c.iperfRounds(ctx, pr, errs, secs, 1)
	c.logf("encrypted: pier %.2f, Docker %.2f, raw wireguard-go %.2f (VXLAN inside %.2f) Gbit/s", median(samples[0]), median(samples[1]), median(samples[2]), median(samples[3]))
	for k := range pr {
		r := crow{Scenario: "1 stream", System: encNames[k], Samples: samples[k], Err: errs[k]}
		if k == sysPier {
			var ratios, goals []string
			for _, b := range []struct {
				k    int
				what string
			}{{sysRaw, "plain"}, {sysRawVX, "VXLAN inside"}} {
				if x := ratioTo(samples[k], samples[b.k]); x != "" {
					ratios = append(ratios, x+" of raw "+b.what)
				}
				goals = append(goals, b.what+" "+verdictOf(len(samples[k]) > 0 && len(samples[b.k]) > 0, median(samples[k]) >= 0.9*median(samples[b.k])))
			}
			r.Ratio, r.Goal = strings.Join(ratios, "; "), "≥ 0.9 of raw: "+strings.Join(goals, ", ")
		}
		if k == sysRawVX {
			if x := ratioTo(samples[k], samples[sysRaw]); x != "" {
				r.Ratio = x + " of raw plain"
			}
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
	sec.Notes = append(sec.Notes, "pier's hosts reach each other through the lab bridge (veth → bridge → veth); the raw namespaces through one veth. The raw rows are the ceiling of userspace WireGuard on this machine for each packet shape.")
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
// at each other's veth address, port 51821; tunnel addresses 10.254.8.1/.2). Over it:
// 10.254.10.1/.2 for plain TCP (route MTU mtu) and a VXLAN device vxwg (VNI 43,
// port 4790, MTU mtu) with 10.254.9.1/.2. It returns the plain and the VXLAN pair.
func (c *cluster) rawWireguard(ctx context.Context, mtu int) (plain, vx endpointPair, err error) {
	if c.raw == nil {
		return plain, vx, errors.New("the raw pair could not be built (see Problems)")
	}
	var keys [2]wg.Key
	for i := range keys {
		if keys[i], err = wg.GenerateKey(); err != nil {
			return plain, vx, err
		}
	}
	type side struct{ ns, underlay, tunnel, plain, vx string }
	sides := []side{{c.raw.a, "203.0.113.1", "10.254.8.1", "10.254.10.1", "10.254.9.1"}, {c.raw.b, "203.0.113.2", "10.254.8.2", "10.254.10.2", "10.254.9.2"}}
	for i, sd := range sides {
		o := sides[1-i]
		peer := keys[1-i].Public()
		cfg := fmt.Sprintf("private_key=%s\nlisten_port=51821\npublic_key=%s\nendpoint=%s:51821\nallowed_ip=%s/32\nallowed_ip=%s/32\n",
			hex.EncodeToString(keys[i][:]), hex.EncodeToString(peer[:]), o.underlay, o.tunnel, o.plain)
		file := filepath.Join(c.cfg.WorkDir, fmt.Sprintf("wgraw%d.conf", i))
		if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
			return plain, vx, err
		}
		if _, err := c.startHelper(startProc(fmt.Sprintf("wg-tunnel-%d", i), filepath.Join(c.cfg.WorkDir, fmt.Sprintf("wgraw%d.log", i)),
			"nsenter", "--net="+sd.ns, "--", c.cfg.Self, "probe", "wg-tunnel", "-config", file, "-mtu", strconv.Itoa(mtu+50))); err != nil {
			return plain, vx, err
		}
		if err := waitLink(ctx, sd.ns, "wgraw0", 10*time.Second); err != nil {
			return plain, vx, err
		}
		for _, args := range [][]string{
			{"addr", "add", sd.tunnel + "/32", "dev", "wgraw0"},
			{"addr", "add", sd.plain + "/32", "dev", "wgraw0"},
			{"link", "set", "wgraw0", "up"},
			{"route", "add", o.tunnel + "/32", "dev", "wgraw0"},
			{"route", "add", o.plain + "/32", "dev", "wgraw0", "src", sd.plain, "mtu", strconv.Itoa(mtu)},
			{"link", "add", "vxwg", "type", "vxlan", "id", "43", "local", sd.tunnel, "dstport", "4790", "nolearning"},
			{"link", "set", "vxwg", "mtu", strconv.Itoa(mtu), "up"},
			{"addr", "add", sd.vx + "/24", "dev", "vxwg"},
		} {
			if _, err := runIn(ctx, sd.ns, append([]string{"ip"}, args...)...); err != nil {
				return plain, vx, err
			}
		}
	}
	for i, sd := range sides {
		o := sides[1-i]
		mac, err := macOf(ctx, filepath.Base(o.ns), "vxwg")
		if err != nil {
			return plain, vx, err
		}
		if _, err := runIn(ctx, sd.ns, "ip", "neigh", "add", o.vx, "lladdr", mac, "dev", "vxwg", "nud", "permanent"); err != nil {
			return plain, vx, err
		}
		if _, err := runIn(ctx, sd.ns, "bridge", "fdb", "append", mac, "dev", "vxwg", "dst", o.tunnel, "self", "permanent"); err != nil {
			return plain, vx, err
		}
	}
	return endpointPair{name: "raw-wg", serverNS: c.raw.a, client: c.raw.b, serverIP: "10.254.10.1"},
		endpointPair{name: "raw-wgvx", serverNS: c.raw.a, client: c.raw.b, serverIP: "10.254.9.1"}, nil
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
func (c *cluster) iperfServers(pr []endpointPair, errs []error, tag string) []error {
	errs = slices.Clone(errs)
	for k := range pr {
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
func (c *cluster) iperfRounds(ctx context.Context, pr []endpointPair, errs []error, secs, streams int) ([][]float64, []error) {
	errs = slices.Clone(errs)
	samples := make([][]float64, len(pr))
	for i := range c.cfg.NTput {
		for j := range pr {
			k := (i + j) % len(pr)
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

package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// portsSample is one start/remove of a box with published ports.
type portsSample struct {
	start, remove       float64 // ms
	removeAll           float64 // ms, until deferred kernel work is done
	procs, proxies      int     // processes added in the daemon's namespace
	rss, pss, daemonRSS float64 // MiB added (all processes in the daemon's namespace; the daemon alone)
	proxyRSS            float64 // MiB, docker-proxy processes
}

// scenPorts starts a box with 0 and with 200 published TCP ports, measuring the
// start time, the processes and memory the daemon side gains, and the removal time.
func (r *runner) scenPorts(ctx context.Context) *section {
	sec := &section{Title: "Start a sandbox/container with published ports",
		Intro: fmt.Sprintf("Start = pier `POST /pier/v1/sandboxes`; Docker `POST /containers/create` + `/start` (busybox `sleep 3600` on the default bridge). "+
			"Ports: host 20000+i → box 10000+i/tcp, no host IP (Docker binds 0.0.0.0 and ::). Processes and memory are counted over every process in the daemon's network namespace "+
			"(dockerd, containerd, shims, docker-proxy; pierd) after the start minus before it; the container's own `sleep` is not counted. %d iterations with 0 ports, %d with 200. %s",
			r.cfg.Iter.Start0, r.cfg.Iter.Start200, settleNote)}
	for _, nports := range []int{0, 200} {
		n := r.cfg.Iter.Start0
		if nports > 0 {
			n = r.cfg.Iter.Start200
		}
		var samples [2][]portsSample
		var pending [2]string
		if ok, why := pierPortsAvailable(); nports > 0 && !ok {
			pending[0] = why
		}
		warm := 1 // the first container start of a fresh dockerd is slower
		if nports > 0 {
			warm = 0
		}
		errs := r.alternate(ctx, n, warm, [2]bool{pending[0] != ""}, func(ctx context.Context, i int, s system) error {
			ps, err := r.portsOnce(ctx, s, fmt.Sprintf("pb-ports%d-%d", nports, i+1), nports)
			if err == nil && i >= 0 {
				samples[idx(s)] = append(samples[idx(s)], ps)
			}
			return err
		})
		r.logf("ports: %d ports done", nports)
		sec.Rows = append(sec.Rows, portsRows(nports, samples, errs, pending)...)
	}
	if ok, _ := pierPortsAvailable(); ok {
		sec.Notes = append(sec.Notes, "pier published its ports through the sandbox API's `Ports` field (Docker's -p syntax).")
	}
	return sec
}

// portsOnce starts one box with nports published ports and removes it again.
func (r *runner) portsOnce(ctx context.Context, s system, name string, nports int) (portsSample, error) {
	ino, err := nsInode(s.Netns())
	if err != nil {
		return portsSample{}, err
	}
	before, err := measureUsage(ino, s.DaemonPID(), r.skip)
	if err != nil {
		return portsSample{}, err
	}
	b, err := s.StartBox(ctx, boxSpec{Name: name, Ports: nports})
	if err != nil {
		return portsSample{}, fmt.Errorf("start with %d ports: %w", nports, err)
	}
	r.settle(ctx)
	after, uerr := measureUsage(ino, s.DaemonPID(), r.skip)
	remove, deferred, rerr := r.op(ctx, func() error { return s.RemoveBox(ctx, b) })
	ps := portsSample{start: ms(b.Took), remove: remove, removeAll: remove + deferred,
		procs: after.Procs - before.Procs, proxies: after.Proxies - before.Proxies,
		rss: mib(after.RSS - before.RSS), pss: mib(after.PSS - before.PSS),
		daemonRSS: mib(after.DaemonRSS - before.DaemonRSS), proxyRSS: mib(after.ProxyRSS - before.ProxyRSS)}
	if err := errors.Join(uerr, rerr); err != nil {
		return portsSample{}, err
	}
	return ps, nil
}

// memFloor is what a memory difference must exceed to mean something: a Go daemon's
// RSS moves by a few hundred KiB with its heap and page cache on its own.
const memFloor = 1.0 // MiB

func mib(kib int64) float64 { return float64(kib) / 1024 }

// portsRows turns the samples of one port count into rows.
func portsRows(nports int, samples [2][]portsSample, errs [2]error, pending [2]string) []row {
	col := func(k int, f func(portsSample) float64) side {
		s := side{Err: errs[k], Pending: pending[k]}
		for _, ps := range samples[k] {
			s.Samples = append(s.Samples, f(ps))
		}
		return s
	}
	mk := func(key, name string, kd kind, f func(portsSample) float64) row {
		rw := row{Key: fmt.Sprintf("ports%d-%s", nports, key), Name: fmt.Sprintf(name, nports), Kind: kd, Pier: col(0, f), Docker: col(1, f)}
		if strings.Contains(name, "MiB") {
			rw.Floor = memFloor
		}
		return rw
	}
	rows := []row{
		mk("start", "start, %d ports (ms)", lowerTime, func(p portsSample) float64 { return p.start }),
		mk("remove", "remove, %d ports (ms)", lowerTime, func(p portsSample) float64 { return p.remove }),
		mk("removeall", "remove, %d ports, until deferred kernel work is done (ms)", lowerTime, func(p portsSample) float64 { return p.removeAll }),
		mk("procs", "processes added, %d ports", lowerAmount, func(p portsSample) float64 { return float64(p.procs) }),
	}
	if nports > 0 {
		rows = append(rows,
			mk("proxies", "of which docker-proxy, %d ports", lowerAmount, func(p portsSample) float64 { return float64(p.proxies) }),
			mk("proxyrss", "docker-proxy RSS, %d ports (MiB)", lowerAmount, func(p portsSample) float64 { return p.proxyRSS }))
	}
	return append(rows,
		mk("rss", "memory added, RSS, %d ports (MiB)", lowerAmount, func(p portsSample) float64 { return p.rss }),
		mk("pss", "memory added, PSS, %d ports (MiB)", lowerAmount, func(p portsSample) float64 { return p.pss }),
		mk("daemonrss", "daemon RSS added (dockerd / pierd), %d ports (MiB)", lowerAmount, func(p portsSample) float64 { return p.daemonRSS }))
}

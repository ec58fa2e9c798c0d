package overlay

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// The tunnel probe: after a local endpoint joins, the driver checks once per
// (network, remote node) per run that the VXLAN path carries TCP and not only ICMP.
// A broken transmit checksum offload on the underlay interface lets ICMP through and
// drops every TCP segment at the far end; that looks like a firewall and is hard to
// find, so the driver names the interface and the fix in a warning. The probe runs on
// the driver's own goroutine (Start launches it, Close stops it) and never delays or
// fails a join.

// Probe timing: each attempt waits up to DefaultProbeWait for an answer, probeTries times.
const (
	DefaultProbeWait = time.Second
	probeTries       = 3
	probePort        = 9 // any port: a SYN-ACK or a RST both prove the segment arrived intact
)

// probeJob is one remote node to probe, from inside one local sandbox.
type probeJob struct {
	network    string // the network's name, for the warning
	nid        string
	sandboxKey string
	node       netip.Addr // the remote host's underlay address
	dst        netip.Addr // an endpoint address on that host
}

type probeKey struct {
	nid  string
	node netip.Addr
}

// prober owns the probe goroutine and the record of what was probed.
type prober struct {
	k    Kernel
	log  *slog.Logger
	wait time.Duration // per attempt; an attempt that fails early waits it out
	wake chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex // guards the fields below
	done    map[probeKey]bool
	queue   []probeJob
	cancel  context.CancelFunc
	started bool
}

func newProber(k Kernel, log *slog.Logger, wait time.Duration) *prober {
	return &prober{k: k, log: log, wait: wait, wake: make(chan struct{}, 1), done: map[probeKey]bool{}}
}

// enqueue schedules j unless its (network, node) was already probed in this run.
// It never blocks.
func (p *prober) enqueue(j probeJob) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := probeKey{j.nid, j.node}
	if p.done[key] {
		return
	}
	p.done[key] = true
	p.queue = append(p.queue, j)
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// start launches the probe goroutine; jobs queued before it are kept.
func (p *prober) start(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return
	}
	p.started = true
	ctx, p.cancel = context.WithCancel(context.WithoutCancel(ctx))
	p.wg.Go(func() { p.run(ctx) })
}

// close stops the goroutine and waits for it; idempotent.
func (p *prober) close() {
	p.mu.Lock()
	cancel := p.cancel
	p.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	p.wg.Wait()
}

func (p *prober) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		}
		for j, ok := p.next(); ok && ctx.Err() == nil; j, ok = p.next() {
			p.probe(ctx, j)
		}
	}
}

func (p *prober) next() (probeJob, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.queue) == 0 {
		return probeJob{}, false
	}
	j := p.queue[0]
	p.queue = p.queue[1:]
	return j, true
}

// probe decides: ICMP answered and TCP not => warn; ICMP not answered => the peer is
// down or filtered, nothing to say; TCP answered => all is well.
func (p *prober) probe(ctx context.Context, j probeJob) {
	if err := p.reach(ctx, j, false); err != nil {
		p.log.DebugContext(ctx, "tunnel probe: no ICMP answer, not judging TCP", "network", j.network, "node", j.node, "dst", j.dst, "err", err)
		return
	}
	if p.reach(ctx, j, true) == nil {
		p.log.DebugContext(ctx, "tunnel probe: TCP and ICMP pass", "network", j.network, "node", j.node)
		return
	}
	if ctx.Err() != nil {
		return
	}
	iface, err := p.k.UnderlayIface(ctx, j.node)
	if err != nil {
		iface = "the underlay interface"
	}
	p.log.WarnContext(ctx, tcpFailsMessage(j.network, j.node, iface), "network", j.network, "node", j.node, "interface", iface)
}

// tcpFailsMessage is the warning a broken checksum offload earns.
func tcpFailsMessage(network string, node netip.Addr, iface string) string {
	return fmt.Sprintf("overlay network %s: TCP through the VXLAN tunnel to node %s (underlay %s) fails while ICMP works: "+
		"broken checksum offload on %s? fix: ethtool -K %s tx-checksum-ip-generic off (or tx off)", network, node, iface, iface, iface)
}

// reach tries up to probeTries times, p.wait each: an attempt that fails at once (the
// sandbox's address not configured yet, say) waits out its time before the next.
func (p *prober) reach(ctx context.Context, j probeJob, tcp bool) error {
	var err error
	for range probeTries {
		actx, cancel := context.WithTimeout(ctx, p.wait)
		err = p.k.Reach(actx, j.sandboxKey, j.dst, tcp)
		if err == nil {
			cancel()
			return nil
		}
		<-actx.Done()
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return err
}

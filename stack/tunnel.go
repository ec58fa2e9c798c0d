package stack

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/piernet/pier/cluster"
	"github.com/piernet/pier/driver/overlay"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/wg"
)

// tunnel is this node's WireGuard tunnel, which carries the VXLAN of encrypted
// overlays (see overlay.HostKernel.Tunnel and package wg). Its device lives in a
// namespace of its own, pinned under the exec root so that encrypted VXLAN devices
// (whose sockets are there) survive a pierd restart; its UDP socket is in the host
// namespace. Peers: every other node of the cluster that is up and has published a
// key; a node that goes down or leaves is dropped.
type tunnel struct {
	ns      *netns.Namespace
	t       *wg.Tunnel // nil when the tunnel could not be opened (err says why)
	err     error
	port    int
	keyPath string
	log     *slog.Logger
	cl      *cluster.Cluster // set by follow
	opts    wg.Options       // how t was opened (PrivateKey follows rotations); for heal

	rotMu     sync.Mutex // serialises rotations
	mu        sync.Mutex // guards peers and acked
	peers     map[string]wg.Peer
	acked     map[string]int64         // node ID → key generation acknowledged
	quiet     map[string]wg.Key        // peers entered without a keepalive until initDelay passes
	switching map[string]pendingSwitch // peers whose new key is put in use after switchDelay

	cancel context.CancelFunc
	done   chan struct{}
	wg     sync.WaitGroup // periodic rotation
}

// tunnelKeepalive is every peer entry's keepalive; turning it on sends a keepalive at
// once, or a handshake when there is no session (see initDelay).
const tunnelKeepalive = 25 * time.Second

// openTunnel opens the tunnel; a failure is kept (encrypted networks then refuse to
// extend here, with that reason), not returned.
func openTunnel(ctx context.Context, o Options, host *netns.Namespace) *tunnel {
	co := o.Cluster
	tn := &tunnel{port: wg.DefaultListenPort, log: o.Logger.With("component", "wireguard", "addr", o.Cluster.Advertise), peers: map[string]wg.Peer{},
		acked: map[string]int64{}, quiet: map[string]wg.Key{}, switching: map[string]pendingSwitch{}, keyPath: filepath.Join(o.DataRoot, "wireguard", "private.key")}
	if co.WGPort != 0 {
		tn.port = co.WGPort
	}
	tn.err = tn.open(ctx, o, host)
	if tn.err != nil {
		tn.log.WarnContext(ctx, "no WireGuard tunnel: encrypted overlays cannot extend to this host", "err", tn.err)
	}
	return tn
}

func (tn *tunnel) open(ctx context.Context, o Options, host *netns.Namespace) error {
	key, created, err := wg.LoadOrCreateKey(tn.keyPath)
	if err != nil {
		return err
	}
	if created {
		tn.log.InfoContext(ctx, "generated this node's WireGuard key", "public", key.Public().String())
	}
	dir := filepath.Join(o.ExecRoot, "wireguard")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	path := filepath.Join(dir, "netns")
	if netns.IsPinned(path) {
		tn.ns, err = netns.Open(path)
	} else {
		tn.ns, err = netns.Create(ctx, path)
	}
	if err != nil {
		return fmt.Errorf("the tunnel namespace: %w", err)
	}
	under, err := overlay.HostKernel{Host: host}.UnderlayMTU(ctx, o.Cluster.Advertise)
	if err != nil {
		return err
	}
	overhead := 60
	if o.Cluster.Advertise.Is6() {
		overhead = 80
	}
	tn.opts = wg.Options{TunnelNS: path, SocketNS: host.Path, ListenPort: tn.port, PrivateKey: key,
		Address: netip.PrefixFrom(o.Cluster.Advertise, o.Cluster.Advertise.BitLen()), MTU: under - overhead, Logger: tn.log}
	tn.t, err = wg.Open(ctx, tn.opts)
	if err != nil {
		return err
	}
	tn.log.InfoContext(ctx, "WireGuard tunnel up", "mode", tn.t.Mode(), "port", tn.port, "public", key.Public().String())
	return nil
}

// capability is what pier node ls shows for encryption.
func (tn *tunnel) capability() string {
	if tn.t == nil {
		return "unavailable"
	}
	return "wireguard-" + string(tn.t.Mode())
}

func (tn *tunnel) publicKey() string {
	if tn.t == nil {
		return ""
	}
	return tn.t.PublicKey().String()
}

// kernel gives the overlay driver the tunnel namespace (or the reason it has none).
func (tn *tunnel) kernel(host *netns.Namespace) overlay.HostKernel {
	k := overlay.HostKernel{Host: host}
	if tn.t != nil {
		k.Tunnel = tn.ns
	} else {
		k.TunnelErr = tn.err.Error()
	}
	return k
}

// follow keeps the peers in line with the cluster's nodes until Close.
func (tn *tunnel) follow(ctx context.Context, cl *cluster.Cluster, every time.Duration) {
	if tn.t == nil {
		return
	}
	ctx, tn.cancel = context.WithCancel(context.WithoutCancel(ctx))
	tn.done = make(chan struct{})
	tn.cl = cl
	_, events := cl.Subscribe(ctx)
	self := cl.Self().ID
	go func() {
		defer close(tn.done)
		tn.sync(ctx, cl.Nodes(), self)
		for ev := range events {
			if ev.Kind == cluster.NodeChanged {
				tn.sync(ctx, cl.Nodes(), self)
			}
		}
	}()
	if every > 0 {
		tn.wg.Go(func() { tn.rotateEvery(ctx, every) })
	}
	tn.wg.Go(func() { tn.watchDevice(ctx, self) })
}

// deviceCheck is how often the tunnel's device is looked for.
const deviceCheck = time.Second

// watchDevice re-creates the tunnel's device when it disappears (deleted by hand):
// until then the encrypted networks' traffic has no route and is dropped — never
// sent in cleartext — and this is logged.
func (tn *tunnel) watchDevice(ctx context.Context, self string) {
	tick := time.NewTicker(deviceCheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if _, err := tn.ns.NL.LinkByName(tn.deviceName()); err == nil {
			continue
		}
		tn.log.ErrorContext(ctx, "the WireGuard device disappeared: encrypted overlays are cut off (nothing leaves in cleartext); re-creating it")
		if tn.reopen(ctx) {
			tn.sync(ctx, tn.cl.Nodes(), self)
		}
	}
}

func (tn *tunnel) deviceName() string {
	if tn.opts.Name != "" {
		return tn.opts.Name
	}
	return wg.DefaultName
}

// reopen replaces a tunnel whose device is gone by a new one with the same key.
func (tn *tunnel) reopen(ctx context.Context) bool {
	tn.rotMu.Lock()
	defer tn.rotMu.Unlock()
	tn.mu.Lock()
	defer tn.mu.Unlock()
	_ = tn.t.Close()
	t, err := wg.Open(ctx, tn.opts)
	if err != nil {
		tn.log.ErrorContext(ctx, "re-creating the WireGuard device", "err", err)
		return false
	}
	tn.t, tn.peers = t, map[string]wg.Peer{}
	tn.log.InfoContext(ctx, "WireGuard device re-created")
	return true
}

// rotateEvery rotates the key periodically (--cluster-key-rotation) until Close, each
// period jittered by up to ±10 %: nodes started together must not rotate together
// (two ends of a tunnel rotating within one handshake can leave it without a session
// until WireGuard's 5 s retry; see docs/overlay.md).
func (tn *tunnel) rotateEvery(ctx context.Context, every time.Duration) {
	for {
		d := every - every/10 + time.Duration(rand.Int64N(int64(every/5)+1))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		if r, err := tn.rotate(ctx); err != nil || len(r.Missing)+len(r.NoSession) > 0 {
			tn.log.WarnContext(ctx, "periodic WireGuard key rotation", "err", err, "not_acknowledged_by", r.Missing, "no_session_with", r.NoSession)
		}
	}
}

// sync sets the tunnel's peers: every other node that is up and has a key. Once a
// peer's key generation is in use here, it is acknowledged in the store (a rotation
// completes when every node has).
func (tn *tunnel) sync(ctx context.Context, nodes []cluster.Node, self string) {
	want := map[string]wg.Peer{}
	gens := map[string]int64{}
	for _, n := range nodes {
		if n.ID == self || n.State != cluster.Ready || n.WGKey == "" {
			continue
		}
		key, err := wg.ParseKey(n.WGKey)
		if err != nil {
			tn.log.WarnContext(ctx, "a node's WireGuard key does not parse", "node", n.Name, "err", err)
			continue
		}
		port := n.WGPort
		if port == 0 {
			port = wg.DefaultListenPort
		}
		want[n.ID] = wg.Peer{PublicKey: key, Endpoint: netip.AddrPortFrom(n.Addr, uint16(port)),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(n.Addr, n.Addr.BitLen())}, Keepalive: tunnelKeepalive}
		gens[n.ID] = n.WGGen
	}
	tn.mu.Lock()
	defer tn.mu.Unlock()
	for id := range tn.switching {
		if _, ok := want[id]; !ok {
			delete(tn.switching, id)
		}
	}
	for id, p := range want {
		old, had := tn.peers[id]
		switch {
		case had && old.PublicKey != p.PublicKey:
			// The peer rotated its key: its entry keeps the old key for switchDelay.
			tn.switchLocked(ctx, id, p, gens[id])
			want[id] = old
			delete(gens, id) // acknowledged once switched
			continue
		case !had && self > id:
			// A new peer: the node with the smaller ID starts the handshake.
			tn.quietLocked(ctx, id, p.PublicKey)
		}
		if k, ok := tn.quiet[id]; ok && k == p.PublicKey {
			p.Keepalive = 0
			want[id] = p
		}
	}
	if !maps.EqualFunc(want, tn.peers, samePeer) {
		if err := tn.t.SetPeers(ctx, slices.Collect(maps.Values(want))); err != nil {
			tn.log.ErrorContext(ctx, "configuring WireGuard peers", "err", err)
			return
		}
		tn.peers = want
		tn.log.InfoContext(ctx, "WireGuard peers", "count", len(want))
	}
	for id, gen := range gens {
		tn.ackLocked(ctx, id, gen)
	}
}

// ackLocked acknowledges in the store that generation gen of node id's key is in use
// here (once per generation).
func (tn *tunnel) ackLocked(ctx context.Context, id string, gen int64) {
	if g, ok := tn.acked[id]; ok && g == gen {
		return
	}
	if err := tn.cl.AckKey(ctx, id, gen); err != nil {
		tn.log.WarnContext(ctx, "acknowledging a node's WireGuard key", "node", id, "err", err)
		return
	}
	tn.acked[id] = gen
}

// switchDelay is how long the entry of a peer that rotated its key keeps the old key
// once the new one is seen. The peer switched before publishing: it no longer sends
// on the old session, but packets it sent just before can still be on their way
// through either end's WireGuard (queued, being decrypted); once the entry has the new
// key they would fail WireGuard's source check and be lost. The peer's own handshake
// under the new key, sent before it published, has been refused by then, so this end
// can start one at once (one initiator: handshakes that cross leave the pair without a
// session for 5 s). Meanwhile the peer holds its packets (WireGuard holds 128 per
// peer).
const switchDelay = 100 * time.Millisecond

// pendingSwitch is a peer's new entry waiting for switchDelay, and its key generation.
type pendingSwitch struct {
	peer wg.Peer
	gen  int64
}

// switchLocked puts peer id's new entry p in place after switchDelay (unless a newer
// key or the peer's departure came meanwhile), starts its handshake, and acknowledges
// generation gen.
func (tn *tunnel) switchLocked(ctx context.Context, id string, p wg.Peer, gen int64) {
	if cur, ok := tn.switching[id]; ok && cur.peer.PublicKey == p.PublicKey {
		tn.switching[id] = pendingSwitch{p, gen}
		return
	}
	tn.switching[id] = pendingSwitch{p, gen}
	tn.wg.Go(func() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(switchDelay):
		}
		tn.mu.Lock()
		defer tn.mu.Unlock()
		sw, ok := tn.switching[id]
		if !ok || sw.peer.PublicKey != p.PublicKey {
			return
		}
		delete(tn.switching, id)
		peers := maps.Clone(tn.peers)
		peers[id] = sw.peer
		if err := tn.t.SetPeers(ctx, slices.Collect(maps.Values(peers))); err != nil {
			tn.log.ErrorContext(ctx, "switching a WireGuard peer to its new key", "node", id, "err", err)
			return
		}
		tn.peers = peers
		set := time.Now()
		tn.wg.Go(func() { tn.ensureSession(ctx, id, sw.peer.PublicKey, set) })
		tn.ackLocked(ctx, id, sw.gen)
	})
}

// initDelay is how long a new peer's entry stays without a keepalive when the other
// end starts the handshake (the node with the smaller ID does). WireGuard has one handshake state per peer: when both ends send an initiation
// within one round trip, each consumes the other's, both responses are refused, and
// the pair has no session until WireGuard retries after 5 s. So one end initiates;
// the other turns its keepalive on — which sends a keepalive, or a handshake if its
// initiation was refused (sent before this end had the entry) — only after initDelay.
const initDelay = 100 * time.Millisecond

// quietLocked keeps the entry for peer id (with key) without a keepalive for
// initDelay, then turns its keepalive on.
func (tn *tunnel) quietLocked(ctx context.Context, id string, key wg.Key) {
	if k, ok := tn.quiet[id]; ok && k == key {
		return
	}
	tn.quiet[id] = key
	tn.wg.Go(func() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(initDelay):
		}
		tn.mu.Lock()
		defer tn.mu.Unlock()
		if tn.quiet[id] != key {
			return
		}
		delete(tn.quiet, id)
		p, ok := tn.peers[id]
		if !ok || p.PublicKey != key {
			return
		}
		p.Keepalive = tunnelKeepalive
		peers := maps.Clone(tn.peers)
		peers[id] = p
		if err := tn.t.SetPeers(ctx, slices.Collect(maps.Values(peers))); err != nil {
			tn.log.ErrorContext(ctx, "turning a WireGuard peer's keepalive on", "node", id, "err", err)
			return
		}
		tn.peers = peers
	})
}

// sessionCheck is how long a peer's new key is first given to carry a session before
// its entry is made again; each later check waits twice as long (a loaded machine's
// handshakes take longer, and making an entry again cancels one in flight, and drops
// the packets it holds). Rotations are serialised and the rotating side sends its
// handshake first, so this is a safety net, not the normal path.
const sessionCheck = time.Second

// ensureSession makes sure a peer whose key just changed gets a session with it.
// Handshakes can cross (both ends rotating close together) or meet WireGuard's flood
// limit on initiations, and WireGuard itself retries only after 5 s; a peer entry made anew initiates at once. So when no handshake with the new
// key happened within sessionCheck, the entry is removed and added again (a few
// times at most).
func (tn *tunnel) ensureSession(ctx context.Context, id string, key wg.Key, since time.Time) {
	wait := sessionCheck
	for range 4 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait *= 2
		tn.mu.Lock()
		t := tn.t // reopen replaces it under mu
		tn.mu.Unlock()
		ps, err := t.Peers(ctx)
		if err != nil {
			return
		}
		if slices.ContainsFunc(ps, func(p wg.PeerStatus) bool { return p.PublicKey == key && p.LastHandshake.After(since) }) {
			return
		}
		tn.mu.Lock()
		cur, ok := tn.peers[id]
		if !ok || cur.PublicKey != key {
			tn.mu.Unlock()
			return
		}
		without := make([]wg.Peer, 0, len(tn.peers))
		for pid, p := range tn.peers {
			if pid != id {
				without = append(without, p)
			}
		}
		err = errors.Join(tn.t.SetPeers(ctx, without), tn.t.SetPeers(ctx, slices.Collect(maps.Values(tn.peers))))
		tn.mu.Unlock()
		tn.log.InfoContext(ctx, "no WireGuard session with a peer's new key yet: its entry made again", "node", id, "err", err)
	}
}

// rotateTimeout bounds the wait for every node's acknowledgement of a new key, and
// then the wait for a session under it with each of them.
const rotateTimeout = 10 * time.Second

// rotateLockWait bounds the wait for another node's rotation to finish.
const rotateLockWait = 30 * time.Second

// Rotation is the outcome of a key rotation.
type Rotation struct {
	Generation int64
	PublicKey  string
	Took       time.Duration // until every ready node acknowledged and has a session under the new key
	Missing    []string      // nodes that had not acknowledged within rotateTimeout
	NoSession  []string      // nodes that acknowledged but had no session under the new key within rotateTimeout
}

// rotate replaces this node's key pair, make-before-break:
//
//  1. the cluster-wide rotation lock is taken: one node at a time, so the two ends of
//     a tunnel never change keys within one handshake (their handshakes would cross);
//  2. the new private key is stored, then used here: this side's one handshake under
//     it goes out at once (refused by peers that do not know the key yet, and not
//     retried for 5 s); packets to peers wait for sessions (WireGuard holds 128 per
//     peer), packets from peers still arrive on the old sessions;
//  3. its public key is published; each peer replaces its entry for this node in one
//     move (no packet finds no entry) and, with its keepalive, starts a handshake at
//     once, then acknowledges the generation through the store;
//  4. the rotation is complete when every ready node has acknowledged and this node
//     has a session with each under the new key; then the lock is released.
func (tn *tunnel) rotate(ctx context.Context) (Rotation, error) {
	if tn.t == nil || tn.cl == nil {
		return Rotation{}, errdefs.Unavailable("this node has no WireGuard tunnel: %v", tn.err)
	}
	tn.rotMu.Lock()
	defer tn.rotMu.Unlock()
	unlock, err := tn.cl.LockKeyRotation(ctx, rotateLockWait)
	if err != nil {
		return Rotation{}, fmt.Errorf("waiting for the cluster's key rotation lock: %w", err)
	}
	defer unlock()
	start := time.Now()
	key, err := wg.GenerateKey()
	if err != nil {
		return Rotation{}, err
	}
	if err := wg.SaveKey(tn.keyPath, key); err != nil {
		return Rotation{}, err
	}
	switched := time.Now()
	if err := tn.t.SetPrivateKey(ctx, key); err != nil {
		return Rotation{}, err
	}
	tn.opts.PrivateKey = key
	gen, err := tn.cl.PublishKey(ctx, key.Public().String())
	if err != nil {
		return Rotation{}, fmt.Errorf("publishing the new public key: %w", err)
	}
	missing, err := tn.cl.WaitKeyAcked(ctx, gen, rotateTimeout)
	r := Rotation{Generation: gen, PublicKey: key.Public().String(), Missing: missing}
	if err == nil {
		r.NoSession, err = tn.waitSessions(ctx, switched, missing, rotateTimeout)
	}
	r.Took = time.Since(start)
	tn.log.InfoContext(ctx, "WireGuard key rotated", "generation", gen, "took", r.Took, "missing", missing, "no_session", r.NoSession)
	return r, err
}

// waitSessions waits until this node's device has a session with every peer (but
// the nodes named in skip) made after since, or timeout passes; it returns the
// names of the nodes it has none with.
func (tn *tunnel) waitSessions(ctx context.Context, since time.Time, skip []string, timeout time.Duration) ([]string, error) {
	names := map[string]string{}
	for _, n := range tn.cl.Nodes() {
		names[n.ID] = n.Name
	}
	deadline := time.Now().Add(timeout)
	for {
		tn.mu.Lock()
		t, want := tn.t, maps.Clone(tn.peers)
		tn.mu.Unlock()
		ps, err := t.Peers(ctx)
		if err != nil {
			return nil, err
		}
		var without []string
		for id, p := range want {
			if slices.Contains(skip, names[id]) {
				continue
			}
			if !slices.ContainsFunc(ps, func(s wg.PeerStatus) bool { return s.PublicKey == p.PublicKey && s.LastHandshake.After(since) }) {
				without = append(without, cmp.Or(names[id], id))
			}
		}
		if len(without) == 0 || time.Now().After(deadline) {
			slices.Sort(without)
			return without, nil
		}
		select {
		case <-ctx.Done():
			return without, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func samePeer(a, b wg.Peer) bool {
	return a.PublicKey == b.PublicKey && a.Endpoint == b.Endpoint && slices.Equal(a.AllowedIPs, b.AllowedIPs) && a.Keepalive == b.Keepalive
}

// Close stops following the cluster and removes the tunnel's device (the pinned
// namespace stays for the next run; encrypted traffic stops until then).
func (tn *tunnel) Close() error {
	if tn.cancel != nil {
		tn.cancel()
		<-tn.done
		tn.wg.Wait()
	}
	var err error
	if tn.t != nil {
		err = tn.t.Close()
	}
	if tn.ns != nil {
		tn.ns.Close()
	}
	return err
}

// RotateKey replaces this node's WireGuard key pair (pier node rotate-key) and
// returns once every other ready node acknowledged the new key.
func (s *Stack) RotateKey(ctx context.Context) (Rotation, error) {
	if s.tunnel == nil {
		return Rotation{}, errdefs.Unavailable("key rotation needs cluster mode")
	}
	return s.tunnel.rotate(ctx)
}

package firewall

import (
	"context"
	"errors"
	"fmt"
	"github.com/piernet/pier/internal/nlsock"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Self-healing. The kernel multicasts every nftables change (NFNLGRP_NFTABLES)
// with the netlink port ID of the socket that made it. The watcher listens,
// keeps the changes that touch "inet pier", and drops those made through
// the Firewall's own sockets. Anything left was done by someone else (`nft
// flush ruleset`, a firewalld reload, a hand edit): the healer rewrites the
// whole table in one atomic batch. Conntrack state is not touched, so
// established connections survive.
//
// Why events and not a generation poll: an idle watcher costs nothing
// (blocked in recvmsg), reacts within milliseconds, and sees deleted set
// elements, which a table-exists check would miss. If the socket overflows
// (ENOBUFS: notifications were lost), the healer rewrites the table too,
// since it cannot know what it missed; the receive buffer is sized so that
// pier's own batches do not overflow it.

// healBurst is the most rewrites per second: if something keeps changing
// our table, a fight with it must not eat a CPU.
const healBurst = 10

// monitorBuffer is the receive buffer of the monitor socket.
const monitorBuffer = 16 << 20

// events is the seam around the nftables notification socket.
type events interface {
	// Receive blocks until notifications arrive and returns those that
	// touch pier's table and the ends of batches (possibly none). After
	// Close it returns an error.
	Receive() ([]notice, error)
	Close() error
}

// notice is one notification: a change to pier's table, or the end of a
// batch (NFT_MSG_NEWGEN: the batch was committed).
type notice struct {
	port uint32 // netlink port ID of the socket that made the change
	end  bool
}

// watcher is the state of a started Firewall.
type watcher struct {
	ev     events
	kick   chan struct{} // capacity 1: a heal is pending
	cancel context.CancelFunc
	wg     sync.WaitGroup // the reader and the healer
}

// Start launches the watcher that restores pier's table within
// milliseconds when another process deletes or changes it. Before it
// returns, it writes the table if it is missing or was never written (so
// Reconcile before Start is optional); if that fails, the watcher retries
// every second. The goroutines run until Close; ctx is used only for setting
// up.
func (f *Firewall) Start(ctx context.Context) error {
	f.mu.Lock()
	if err := f.checkLocked(ctx); err != nil {
		f.mu.Unlock()
		return err
	}
	if f.watch != nil {
		f.mu.Unlock()
		return errors.New("firewall watcher already started")
	}
	ev, err := f.subscribe()
	if err != nil {
		f.mu.Unlock()
		return fmt.Errorf("watching nftables: %w", err)
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w := &watcher{ev: ev, kick: make(chan struct{}, 1), cancel: cancel}
	f.watch = w
	f.mu.Unlock()
	// Subscribed first: a change made while this runs is seen by the reader.
	repaired := f.repair(ctx, true) == nil
	w.wg.Go(func() { f.readEvents(wctx, w) })
	w.wg.Go(func() { f.heal(wctx, w, repaired) })
	if !repaired {
		w.kickNow()
	}
	return nil
}

// stop stops the watcher and waits for its goroutines.
func (w *watcher) stop() {
	w.cancel()
	_ = w.ev.Close()
	w.wg.Wait()
}

func (w *watcher) kickNow() {
	select {
	case w.kick <- struct{}{}:
	default: // a heal is already pending
	}
}

// readEvents kicks the healer once per batch that made a foreign change to
// pier's table (a big `nft flush ruleset` spans many reads). If the socket
// fails, self-healing stops (and says so).
func (f *Firewall) readEvents(ctx context.Context, w *watcher) {
	defer w.cancel()
	foreign := false
	for {
		notices, err := w.ev.Receive()
		if errors.Is(err, unix.ENOBUFS) {
			f.log.Warn("nftables notifications were lost; rewriting pier's table")
			w.kickNow()
			foreign = false
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				f.log.Error("nftables watcher failed; pier's table is no longer restored automatically", "err", err)
			}
			return
		}
		for _, n := range notices {
			switch {
			case n.end && foreign:
				w.kickNow()
				foreign = false
			case !n.end && !f.ownPort(n.port):
				foreign = true
			}
		}
	}
}

// heal rewrites the table after each kick until ctx ends. Until a first
// repair succeeds (Start's own, or a retry), it only writes a missing table.
func (f *Firewall) heal(ctx context.Context, w *watcher, repaired bool) {
	var limit burst
	first := !repaired
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		case <-retry.C:
		}
		if !first && !limit.wait(ctx) {
			return
		}
		err := f.repair(ctx, first)
		if err == nil {
			if !first {
				for _, fn := range f.afterHeal {
					fn(ctx)
				}
			}
			first = false
		} else if ctx.Err() == nil {
			f.log.Error("restoring pier's nftables table", "err", err)
			retry.Reset(time.Second)
		}
	}
}

// burst allows healBurst events per second.
type burst struct{ recent []time.Time }

// wait blocks until another event is allowed, and records it; false if
// ctx ended first.
func (b *burst) wait(ctx context.Context) bool {
	if len(b.recent) == healBurst {
		if !sleep(ctx, time.Until(b.recent[0].Add(time.Second))) {
			return false
		}
		b.recent = b.recent[1:]
	}
	b.recent = append(b.recent, time.Now())
	return true
}

// repair rewrites the table; onlyIfMissing skips that when the Firewall
// already wrote it and the table still exists.
func (f *Firewall) repair(ctx context.Context, onlyIfMissing bool) error {
	if onlyIfMissing {
		f.mu.Lock()
		synced := f.synced
		f.mu.Unlock()
		if ok, err := f.Installed(ctx); synced && ok && err == nil {
			return nil
		}
	} else {
		f.log.Warn("pier's nftables table was changed by another process; restoring it")
	}
	return f.Reconcile(ctx)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// ownPort reports whether port is (or was) one of the Firewall's sockets.
func (f *Firewall) ownPort(port uint32) bool {
	f.portsMu.Lock()
	defer f.portsMu.Unlock()
	return f.ownPorts[port]
}

// addOwnPort records the port ID of a socket the Firewall writes with.
// Old IDs are kept: notifications may arrive after a socket was replaced.
func (f *Firewall) addOwnPort(port uint32) {
	f.portsMu.Lock()
	defer f.portsMu.Unlock()
	f.ownPorts[port] = true
}

// netlinkEvents receives nftables notifications on a netlink socket.
type netlinkEvents struct{ c *netlink.Conn }

// subscribeAt opens a notification socket in ns.
func subscribeAt(ns netns.NsHandle) (events, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(ns)})
	if err != nil {
		return nil, err
	}
	err = c.JoinGroup(unix.NFNLGRP_NFTABLES)
	if err == nil {
		err = nlsock.SetBuffer(c, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, monitorBuffer)
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return netlinkEvents{c}, nil
}

func (e netlinkEvents) Close() error { return e.c.Close() }

func (e netlinkEvents) Receive() ([]notice, error) {
	msgs, err := e.c.Receive()
	if err != nil {
		return nil, err
	}
	var out []notice
	for _, m := range msgs {
		switch {
		case isGenEnd(m):
			out = append(out, notice{port: m.Header.PID, end: true})
		case touchesPier(m):
			out = append(out, notice{port: m.Header.PID})
		}
	}
	return out, nil
}

// isGenEnd reports whether m ends a committed batch.
func isGenEnd(m netlink.Message) bool {
	return uint16(m.Header.Type) == unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWGEN
}

// touchesPier reports whether m is an nftables notification about pier's
// table or an object in it. Every nf_tables message starts with an
// nfgenmsg (family first), and attribute 1 names the table in all of
// them (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE).
func touchesPier(m netlink.Message) bool {
	typ := uint16(m.Header.Type)
	if typ>>8 != unix.NFNL_SUBSYS_NFTABLES || typ&0xff == unix.NFT_MSG_NEWGEN || len(m.Data) < 4 {
		return false
	}
	if m.Data[0] != unix.NFPROTO_INET {
		return false
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return false
	}
	for ad.Next() {
		if ad.Type() == 1 {
			return ad.String() == tableName
		}
	}
	return false
}

// portID returns the netlink port ID the kernel bound c to.
func portID(c *netlink.Conn) (uint32, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var port uint32
	var serr error
	err = rc.Control(func(fd uintptr) {
		var sa unix.Sockaddr
		if sa, serr = unix.Getsockname(int(fd)); serr == nil {
			if nl, ok := sa.(*unix.SockaddrNetlink); ok {
				port = nl.Pid
			}
		}
	})
	return port, errors.Join(err, serr)
}

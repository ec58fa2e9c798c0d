package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
)

// pierReapGroup is the interface group in which pierd's bridge driver parks the
// links it deletes in the background ("pier" in ASCII; driver/bridge/reaper.go).
const pierReapGroup = 0x70696572

// settler waits for deferred kernel work. pierd answers a network delete, a
// disconnect or a sandbox removal before the kernel has deleted the bridge or veth
// (its reaper does that in the background: ~20–35 ms of work under the RTNL lock).
// The RTNL lock is one for the whole machine, so without settling that work would
// be charged to whatever operation comes next — pier's or Docker's — and hidden
// from the operation that caused it. After every timed operation the benchmark
// waits until pier's reap group is empty and then takes the RTNL lock once, and it
// reports the time that took next to the API time.
type settler struct {
	pier *netlink.Handle // in pierd's namespace
	lo   netlink.Link
}

func newSettler() (*settler, error) {
	ns, err := vns.GetFromPath(nsPath(nsPier))
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, err
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		h.Close()
		return nil, err
	}
	return &settler{pier: h, lo: lo}, nil
}

// wait returns once no link waits in pier's reap group and the RTNL lock is free.
func (s *settler) wait(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(10 * time.Second)
	for {
		n, err := s.reaping()
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			n, err = 1, nil // links changed during the dump (the reaper at work): ask again
		}
		if err != nil {
			return 0, err
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Since(start), fmt.Errorf("%d links still waiting in pier's reap group after %s", n, time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(time.Millisecond)
	}
	// Setting lo up again changes nothing but takes the RTNL lock: it waits for a
	// deletion that has left the dump but still holds the lock.
	if err := s.pier.LinkSetUp(s.lo); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func (s *settler) reaping() (int, error) {
	links, err := s.pier.LinkList()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, l := range links {
		if l.Attrs().Group == pierReapGroup {
			n++
		}
	}
	return n, nil
}

func (s *settler) close() {
	if s != nil && s.pier != nil {
		s.pier.Close()
	}
}

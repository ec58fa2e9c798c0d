package bench

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// scenNetwork measures creating and deleting a bridge network (addresses from the
// default pools, as `docker network create NAME` does).
func (r *runner) scenNetwork(ctx context.Context) *section {
	n := r.cfg.Iter.Network
	var create, del, delAll [2][]float64
	errs := r.alternate(ctx, n, 1, [2]bool{}, func(ctx context.Context, i int, s system) error {
		var id string
		c, _, err := r.op(ctx, func() (err error) { id, err = s.CreateNetwork(ctx, fmt.Sprintf("pb-net-%d", i+1)); return err })
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		d, deferred, err := r.op(ctx, func() error { return s.RemoveNetwork(ctx, id) })
		if err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		k := idx(s)
		record(&create[k], i, c)
		record(&del[k], i, d)
		record(&delAll[k], i, d+deferred)
		return nil
	})
	r.logf("network: done")
	return &section{
		Title: "Networks",
		Intro: fmt.Sprintf("`POST /networks/create` (bridge driver, subnet from the default pools) and `DELETE /networks/{id}`, %d times each, alternating. %s", n, settleNote),
		Rows: []row{
			{Key: "net-create", Name: "network create (ms)", Kind: lowerTime, Pier: side{Samples: create[0], Err: errs[0]}, Docker: side{Samples: create[1], Err: errs[1]}},
			{Key: "net-delete", Name: "network delete (ms)", Kind: lowerTime, Pier: side{Samples: del[0], Err: errs[0]}, Docker: side{Samples: del[1], Err: errs[1]}},
			{Key: "net-delete-all", Name: "network delete, until deferred kernel work is done (ms)", Kind: lowerTime, Pier: side{Samples: delAll[0], Err: errs[0]}, Docker: side{Samples: delAll[1], Err: errs[1]}},
		},
	}
}

// settleNote explains the "until deferred kernel work is done" rows.
const settleNote = "After every timed operation the benchmark waits until the kernel work pierd defers (it deletes bridges and veths in the background, ~20–35 ms under the machine-wide RTNL lock) is done, so that it is not charged to the next operation of either system; rows marked *until deferred kernel work is done* add that wait to the API time."

// op runs one timed API operation, then waits for deferred kernel work (see
// settler). It returns both times in milliseconds.
func (r *runner) op(ctx context.Context, fn func() error) (api, deferred float64, err error) {
	api, err = timed(fn)
	return api, r.settle(ctx), err
}

// settle waits for deferred kernel work and returns how long that took in ms.
func (r *runner) settle(ctx context.Context) float64 {
	if r.settler == nil {
		return 0
	}
	d, err := r.settler.wait(ctx)
	if err != nil && !r.settleFailed {
		r.settleFailed = true
		r.problem("waiting for deferred kernel work: %v", err)
	}
	return ms(d)
}

// idx is a system's index in runner.systems.
func idx(s system) int {
	if s.Name() == "pier" {
		return 0
	}
	return 1
}

// scenConnect measures connecting a running box (on the default bridge) to a
// user-defined network and disconnecting it again.
func (r *runner) scenConnect(ctx context.Context) *section {
	n := r.cfg.Iter.Connect
	var cs connSamples
	var setup [2]struct {
		net string
		b   box
	}
	var errs [2]error
	for k, s := range r.systems() {
		netID, err := s.CreateNetwork(ctx, "pb-conn")
		if err != nil {
			errs[k] = fmt.Errorf("setup: %w", err)
			continue
		}
		b, err := s.StartBox(ctx, boxSpec{Name: "pb-conn-box"})
		if err != nil {
			errs[k] = fmt.Errorf("setup: %w", err)
		}
		setup[k].net, setup[k].b = netID, b
	}
	r.settle(ctx)
	skip := [2]bool{errs[0] != nil, errs[1] != nil}
	stepErrs := r.alternate(ctx, n, 1, skip, func(ctx context.Context, i int, s system) error {
		k := idx(s)
		return r.connectOnce(ctx, s, setup[k].net, setup[k].b, i, &cs)
	})
	for k, s := range r.systems() {
		errs[k] = joinErr(errs[k], stepErrs[k])
		r.teardown(ctx, s, []box{setup[k].b}, setup[k].net)
	}
	r.logf("connect: done")
	return &section{
		Title: "Connect and disconnect a running sandbox/container",
		Intro: fmt.Sprintf("A running box (pier: a sandbox; Docker: a busybox container running `sleep 3600`), on the default bridge, is connected to a user-defined bridge network (`POST /networks/{id}/connect`) and disconnected again, %d times, alternating. %s", n, settleNote),
		Rows:  cs.rows("", errs, true),
	}
}

// connSamples are connect and disconnect times per system.
type connSamples struct {
	conn, disc, discAll [2][]float64
}

// rows renders the samples; suffix qualifies the row names, label the sides.
func (cs *connSamples) rows(suffix string, errs [2]error, withDeferred bool, labels ...string) []row {
	sd := func(xs [2][]float64, k int) side {
		s := side{Samples: xs[k], Err: errs[k]}
		if len(labels) == 2 {
			s.Label = labels[k]
		}
		return s
	}
	key := strings.ReplaceAll(strings.TrimSpace(suffix), " ", "")
	rows := []row{
		{Key: "connect" + key, Name: "connect" + suffix + " (ms)", Kind: lowerTime, Pier: sd(cs.conn, 0), Docker: sd(cs.conn, 1)},
		{Key: "disconnect" + key, Name: "disconnect" + suffix + " (ms)", Kind: lowerTime, Pier: sd(cs.disc, 0), Docker: sd(cs.disc, 1)},
	}
	if withDeferred {
		rows = append(rows, row{Key: "disconnect-all" + key, Name: "disconnect" + suffix + ", until deferred kernel work is done (ms)", Kind: lowerTime, Pier: sd(cs.discAll, 0), Docker: sd(cs.discAll, 1)})
	}
	return rows
}

// connectOnce connects b to netID and disconnects it, recording the times (unless
// i is a warm-up round).
func (r *runner) connectOnce(ctx context.Context, s system, netID string, b box, i int, cs *connSamples) error {
	c, _, err := r.op(ctx, func() error { return s.Connect(ctx, netID, b) })
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	d, deferred, err := r.op(ctx, func() error { return s.Disconnect(ctx, netID, b) })
	if err != nil {
		return fmt.Errorf("disconnect: %w", err)
	}
	k := idx(s)
	record(&cs.conn[k], i, c)
	record(&cs.disc[k], i, d)
	record(&cs.discAll[k], i, d+deferred)
	return nil
}

// record appends v unless i is a warm-up round.
func record(xs *[]float64, i int, v float64) {
	if i >= 0 {
		*xs = append(*xs, v)
	}
}

// timed runs fn and returns how long it took in milliseconds.
func timed(fn func() error) (float64, error) {
	start := time.Now()
	err := fn()
	return ms(time.Since(start)), err
}

func joinErr(a, b error) error {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	return fmt.Errorf("%w; %w", a, b)
}

// teardown removes boxes and networks a scenario made, reporting failures as
// problems of the run (the final cleanup removes whatever is left anyway).
func (r *runner) teardown(ctx context.Context, s system, boxes []box, nets ...string) {
	ctx = context.WithoutCancel(ctx)
	var ids []box
	for _, b := range boxes {
		if b.ID != "" {
			ids = append(ids, b)
		}
	}
	if err := forEach(ctx, ids, 4, func(ctx context.Context, b box) error { return s.RemoveBox(ctx, b) }); err != nil {
		r.problem("%s: removing boxes: %v", s.Name(), err)
	}
	for _, n := range nets {
		if n == "" {
			continue
		}
		if err := s.RemoveNetwork(ctx, n); err != nil {
			r.problem("%s: removing network %s: %v", s.Name(), n, err)
		}
	}
}

func (r *runner) problem(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.logf("problem: %s", msg)
	r.rep.Problems = append(r.rep.Problems, msg)
}

// scenScale measures connect/disconnect of a probe box while N boxes are already
// on the network. Docker fills its network within cfg.Budget; past it, it stays at
// the N it reached and the report says so.
func (r *runner) scenScale(ctx context.Context) *section {
	sec := &section{Title: "Connect latency with N boxes already on the network",
		Intro: fmt.Sprintf("The network is filled with running boxes (4 API calls at a time), then a probe box on the default bridge is connected and disconnected %d times, alternating. Docker gets %s in total to fill its network; if that runs out it is measured at the N it reached.", r.cfg.Iter.Scale, r.cfg.Budget)}
	type state struct {
		net     string
		probe   box
		members []box
		err     error
		fillDur time.Duration
	}
	var st [2]*state
	for k, s := range r.systems() {
		st[k] = &state{}
		var err error
		if st[k].net, err = s.CreateNetwork(ctx, "pb-scale"); err == nil {
			st[k].probe, err = s.StartBox(ctx, boxSpec{Name: "pb-probe"})
		}
		st[k].err = err
	}
	budgetLeft := r.cfg.Budget
	for _, level := range r.cfg.Scale {
		for k, s := range r.systems() {
			if st[k].err != nil || len(st[k].members) >= level {
				continue
			}
			limit := time.Duration(0)
			if s.Name() == "Docker" {
				limit = budgetLeft
			}
			start := time.Now()
			added, err := r.fill(ctx, s, st[k].net, len(st[k].members), level, limit)
			took := time.Since(start)
			st[k].members = append(st[k].members, added...)
			st[k].fillDur += took
			if s.Name() == "Docker" {
				budgetLeft -= took
			}
			if err != nil {
				st[k].err = fmt.Errorf("filling to %d: %w", level, err)
			}
			r.logf("scale: %s has %d on the network (filled in %s)", s.Name(), len(st[k].members), took.Round(time.Millisecond))
		}
		r.settle(ctx)
		var cs connSamples
		skip := [2]bool{st[0].err != nil, st[1].err != nil}
		errs := r.alternate(ctx, r.cfg.Iter.Scale, 1, skip, func(ctx context.Context, i int, s system) error {
			k := idx(s)
			return r.connectOnce(ctx, s, st[k].net, st[k].probe, i, &cs)
		})
		var stepErrs [2]error
		var labels [2]string
		for k := range 2 {
			stepErrs[k] = joinErr(st[k].err, errs[k])
			if len(st[k].members) != level {
				labels[k] = fmt.Sprintf("N=%d", len(st[k].members))
			}
		}
		sec.Rows = append(sec.Rows, cs.rows(fmt.Sprintf(", N=%s on the network", thousands(int64(level))), stepErrs, false, labels[0], labels[1])...)
	}
	for k, s := range r.systems() {
		n := len(st[k].members)
		if n > 0 {
			sec.Notes = append(sec.Notes, fmt.Sprintf("%s filled its network to %d boxes in %s (%.1f ms per box, 4 at a time).",
				s.Name(), n, st[k].fillDur.Round(time.Millisecond), ms(st[k].fillDur)/float64(n)))
		}
		if top := r.cfg.Scale[len(r.cfg.Scale)-1]; n < top && st[k].err == nil {
			sec.Notes = append(sec.Notes, fmt.Sprintf("%s stopped at N=%d: its %s fill budget ran out; the rows above N=%d measure it at N=%d.", s.Name(), n, r.cfg.Budget, n, n))
		}
		start := time.Now()
		r.teardown(ctx, s, append(st[k].members, st[k].probe), st[k].net)
		took := time.Since(start).Round(time.Millisecond)
		r.logf("scale: %s removed %d boxes in %s", s.Name(), n+1, took)
		sec.Notes = append(sec.Notes, fmt.Sprintf("%s removed its %d boxes in %s (4 at a time).", s.Name(), n+1, took))
	}
	return sec
}

// fill starts boxes named pb-m-<i> on netID until the network has want members
// (from have), 4 at a time, or until limit (> 0) has passed.
func (r *runner) fill(ctx context.Context, s system, netID string, have, want int, limit time.Duration) ([]box, error) {
	fctx := ctx
	deadline := time.Time{}
	if limit > 0 {
		deadline = time.Now().Add(limit)
	}
	jobs := make(chan int)
	type res struct {
		b   box
		err error
	}
	results := make(chan res)
	for range 4 {
		go func() {
			for i := range jobs {
				b, err := s.StartBox(fctx, boxSpec{Name: fmt.Sprintf("pb-m-%d", i), Network: netID})
				results <- res{b, err}
			}
		}()
	}
	var added []box
	var firstErr error
	next, inflight := have, 0
	for next < want || inflight > 0 {
		send := jobs
		if next >= want || firstErr != nil || (!deadline.IsZero() && time.Now().After(deadline)) || ctx.Err() != nil {
			send = nil
			if inflight == 0 {
				break
			}
		}
		select {
		case send <- next:
			next++
			inflight++
		case rs := <-results:
			inflight--
			if rs.err != nil {
				if firstErr == nil {
					firstErr = rs.err
				}
				continue
			}
			added = append(added, rs.b)
		}
	}
	close(jobs)
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return added, firstErr
}

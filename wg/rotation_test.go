package wg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// udpFlow sends a datagram with a sequence number every 5 ms from one namespace to a
// sink in another, which records what arrived.
type udpFlow struct {
	sent atomic.Int64
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex // guards the fields below
	got     map[int64]bool
	last    time.Time
	maxGap  time.Duration
	highest int64
}

func startUDPFlow(t *testing.T, from, to *netns.Namespace, dst netip.Addr) *udpFlow {
	t.Helper()
	f := &udpFlow{stop: make(chan struct{}), done: make(chan struct{}), got: map[int64]bool{}}
	var sink net.PacketConn
	var err error
	nstest.Do(t, to.Handle, func() { sink, err = net.ListenPacket("udp4", netip.AddrPortFrom(dst, 9).String()) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	go f.receive(sink)
	c, err := dialUDP(t, from, netip.AddrPortFrom(dst, 9))
	if err != nil {
		t.Fatal(err)
	}
	go f.send(c)
	return f
}

func (f *udpFlow) send(c *net.UDPConn) {
	defer close(f.done)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var b [8]byte
	for seq := int64(0); ; seq++ {
		select {
		case <-f.stop:
			return
		case <-tick.C:
		}
		binary.BigEndian.PutUint64(b[:], uint64(seq))
		_, _ = c.Write(b[:]) // a failed send counts as lost
		f.sent.Add(1)
	}
}

func (f *udpFlow) receive(pc net.PacketConn) {
	buf := make([]byte, 64)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if n != 8 {
			continue
		}
		now := time.Now()
		f.mu.Lock()
		seq := int64(binary.BigEndian.Uint64(buf))
		f.got[seq] = true
		f.highest = max(f.highest, seq)
		if !f.last.IsZero() {
			f.maxGap = max(f.maxGap, now.Sub(f.last))
		}
		f.last = now
		f.mu.Unlock()
	}
}

func (f *udpFlow) received() (n int, highest int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.got), f.highest
}

// finish stops sending, waits for the datagrams in flight and returns the losses and
// the longest time between two arrivals.
func (f *udpFlow) finish() (sent, lost int64, gap time.Duration) {
	close(f.stop)
	<-f.done
	sent = f.sent.Load()
	nstest.Poll(time.Second, func() bool { n, _ := f.received(); return int64(n) == sent })
	n, _ := f.received()
	f.mu.Lock()
	defer f.mu.Unlock()
	return sent, sent - int64(n), f.maxGap
}

// tcpStream writes a counting pattern (64 KiB every 10 ms) over one connection; the
// server checks every byte.
type tcpStream struct {
	written atomic.Int64
	werr    error
	stop    chan struct{}
	done    chan struct{}
	result  chan tcpResult
}

type tcpResult struct {
	n   int64
	err error
}

func startTCPStream(t *testing.T, from, to *netns.Namespace, dst netip.Addr) *tcpStream {
	t.Helper()
	s := &tcpStream{stop: make(chan struct{}), done: make(chan struct{}), result: make(chan tcpResult, 1)}
	netlab.Serve(t, to, netip.AddrPortFrom(dst, 10).String(), func(c net.Conn) {
		defer c.Close()
		s.result <- checkPattern(c)
	})
	c, err := netlab.Dial(t, from, "tcp4", netip.AddrPortFrom(dst, 10).String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	go s.write(c.(*net.TCPConn))
	return s
}

func (s *tcpStream) write(c *net.TCPConn) {
	defer close(s.done)
	defer c.Close()
	buf := make([]byte, 64<<10)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for off := int64(0); ; {
		select {
		case <-s.stop:
			s.werr = c.CloseWrite()
			return
		case <-tick.C:
		}
		for i := range buf {
			buf[i] = byte((off + int64(i)) % 251)
		}
		n, err := c.Write(buf)
		off += int64(n)
		s.written.Store(off)
		if err != nil {
			s.werr = err
			return
		}
	}
}

func checkPattern(c net.Conn) tcpResult {
	buf := make([]byte, 64<<10)
	var off int64
	for {
		n, err := c.Read(buf)
		for i := range n {
			if buf[i] != byte((off+int64(i))%251) {
				return tcpResult{off + int64(i), errors.New("stream corrupted")}
			}
		}
		off += int64(n)
		if err == io.EOF {
			return tcpResult{off, nil}
		}
		if err != nil {
			return tcpResult{off, err}
		}
	}
}

// finish ends the stream and returns the bytes written and those the server checked.
func (s *tcpStream) finish(t *testing.T) (written int64, r tcpResult) {
	close(s.stop)
	<-s.done
	select {
	case r = <-s.result:
	case <-time.After(30 * time.Second):
		r.err = errors.New("server never saw the end of the stream")
	}
	return s.written.Load(), tcpResult{r.n, errors.Join(s.werr, r.err)}
}

// TestRotation runs a UDP flow (a datagram every 5 ms) and a TCP stream from A's
// tunnel namespace to B across a rotation of A's key: A switches first (SetPrivateKey,
// then B's SetPeers with A's new public key) or B does; the two steps back to back or
// 50 ms apart (as an acknowledgement through etcd would make them); with and without a
// persistent keepalive on B's entry for A; and without a rotation as the baseline. TCP
// must lose nothing; the UDP losses are logged (the package doc sums them up).
//
// By default it runs the baseline and the order pier uses (recommended), once and ten
// times in a row. PIER_TEST_ROTATION_ORDERS=all adds the other seven orders: they
// measure traps (crossed handshakes cost 5 s each, and under load they can cross
// again and again), not behaviour pier relies on, so they stay out of the suite.
func TestRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("runs traffic for a few seconds per case")
	}
	all := os.Getenv("PIER_TEST_ROTATION_ORDERS") == "all"
	cases := []rotationCase{{name: "baseline"}}
	for _, order := range []string{"key-first", "peers-first"} {
		for _, delay := range []time.Duration{0, 50 * time.Millisecond} {
			for _, ka := range []time.Duration{0, 25 * time.Second} {
				tc := rotationCase{fmt.Sprintf("%s/delay=%v/keepalive=%v", order, delay, ka), order, delay, ka, 1}
				if all || tc.recommended() {
					cases = append(cases, tc)
				}
			}
		}
	}
	cases = append(cases, rotationCase{"key-first/delay=50ms/keepalive=25s/10-rotations", "key-first", 50 * time.Millisecond, 25 * time.Second, 10})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { testRotation(t, tc) })
	}
}

type rotationCase struct {
	name      string
	order     string        // "" (no rotation), "key-first", "peers-first"
	delay     time.Duration // between the two steps
	keepalive time.Duration // on B's entry for A
	rotations int           // one after the other, each once the flow is back
}

func testRotation(t *testing.T, tc rotationCase) {
	_, hs := newHosts(t, 2)
	a, b := hs[0], hs[1]
	aPeer := a.peer()
	aPeer.Keepalive = tc.keepalive
	// B first: its keepalive's handshake is dropped by A (no peer yet), so only A
	// initiates when the flow starts. Both initiating at once costs 5 s (see doc.go).
	if err := b.tunnel.SetPeers(t.Context(), []Peer{aPeer}); err != nil {
		t.Fatal(err)
	}
	if err := a.tunnel.SetPeers(t.Context(), []Peer{b.peer()}); err != nil {
		t.Fatal(err)
	}
	udp := startUDPFlow(t, a.tunNS, b.tunNS, b.addr)
	nstest.Eventually(t, "100 datagrams through the tunnel", 15*time.Second, func() bool { n, _ := udp.received(); return n >= 100 })
	tcp := startTCPStream(t, a.tunNS, b.tunNS, b.addr)
	nstest.Eventually(t, "the TCP stream to start", 5*time.Second, func() bool { return tcp.written.Load() > 1<<20 })
	var took time.Duration
	for range max(tc.rotations, 1) {
		atRotation := udp.sent.Load()
		aPeer = rotate(t, a, b, aPeer, tc)
		took = max(took, nstest.Eventually(t, "the flow to resume after the rotation", 20*time.Second, func() bool {
			_, hi := udp.received()
			return hi > atRotation+100
		}))
	}
	sent, lost, gap := udp.finish()
	written, r := tcp.finish(t)
	t.Logf("%s: UDP %d sent, %d lost, longest gap %v, 100 datagrams past a rotation after %v at most; TCP %d bytes written, %d checked, err %v",
		tc.name, sent, lost, gap.Round(time.Millisecond), took.Round(time.Millisecond), written, r.n, r.err)
	if r.err != nil || r.n != written {
		t.Errorf("TCP across the rotation: %d of %d bytes, %v", r.n, written, r.err)
	}
	if tc.recommended() && lost != 0 {
		t.Errorf("the order the package doc recommends lost %d datagrams", lost)
	}
}

// recommended is the order doc.go gives pier: key first, peers after an
// acknowledgement's delay, with a keepalive.
func (tc rotationCase) recommended() bool {
	return tc.order == "key-first" && tc.delay > 0 && tc.keepalive > 0
}

// rotate gives A a new key in the case's order, the steps tc.delay apart (a model of
// the time an acknowledgement takes, not a synchronisation), and returns A's new peer
// entry; order "" does nothing.
func rotate(t *testing.T, a, b *host, aPeer Peer, tc rotationCase) Peer {
	t.Helper()
	if tc.order == "" {
		return aPeer
	}
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	aPeer.PublicKey = k.Public()
	steps := []func() error{
		func() error { return a.tunnel.SetPrivateKey(t.Context(), k) },
		func() error { return b.tunnel.SetPeers(t.Context(), []Peer{aPeer}) },
	}
	if tc.order == "peers-first" {
		steps[0], steps[1] = steps[1], steps[0]
	}
	if err := steps[0](); err != nil {
		t.Fatal(err)
	}
	<-time.After(tc.delay)
	if err := steps[1](); err != nil {
		t.Fatal(err)
	}
	return aPeer
}

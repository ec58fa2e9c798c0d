package dns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// The load generator runs as a separate process (this test binary, re-executed
// inside the sandbox's namespace with loadgenEnv set), so it does not share the
// Go scheduler with the server it measures, just as dnsperf does not.
const loadgenEnv = "PIER_DNS_LOADGEN" // "conns,window,milliseconds,server,name type,name type,..."

func TestMain(m *testing.M) {
	if spec := os.Getenv(loadgenEnv); spec != "" {
		os.Exit(loadgenMain(spec))
	}
	os.Exit(m.Run())
}

// loadResult is what one load generator run measured.
type loadResult struct {
	qps            float64
	p50, p99, p999 time.Duration
	sent, lost     int
}

func (r loadResult) String() string {
	return fmt.Sprintf("%.0f %d %d %d %d %d", r.qps, r.p50, r.p99, r.p999, r.sent, r.lost)
}

func loadgenMain(spec string) int {
	f := strings.Split(spec, ",")
	if len(f) < 5 {
		fmt.Fprintln(os.Stderr, "bad", loadgenEnv)
		return 2
	}
	conns, _ := strconv.Atoi(f[0])
	window, _ := strconv.Atoi(f[1])
	ms, _ := strconv.Atoi(f[2])
	queries, err := packQueries(f[4:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	dial := func() (net.Conn, error) { return net.Dial("udp", f[3]) }
	r, err := loadgen(dial, queries, conns, window, time.Duration(ms)*time.Millisecond)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(r)
	return 0
}

// packQueries turns "name type" lines (dnsperf's format) into queries.
func packQueries(lines []string) ([][]byte, error) {
	var out [][]byte
	for _, l := range lines {
		name, typ, _ := strings.Cut(l, " ")
		m := new(mdns.Msg)
		m.SetQuestion(mdns.Fqdn(name), mdns.StringToType[typ])
		b, err := m.Pack()
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// runLoadgen runs the load generator inside the namespace against server.
func runLoadgen(b *testing.B, n *testNS, server string, lines []string, conns, window int, dur time.Duration) loadResult {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	spec := fmt.Sprintf("%d,%d,%d,%s,%s", conns, window, dur.Milliseconds(), server, strings.Join(lines, ","))
	cmd := exec.Command("nsenter", "--net="+n.path, "--", exe)
	cmd.Env = append(os.Environ(), loadgenEnv+"="+spec)
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("load generator: %v\n%s", err, out)
	}
	var r loadResult
	var p50, p99, p999 int64
	if _, err := fmt.Sscan(string(out), &r.qps, &p50, &p99, &p999, &r.sent, &r.lost); err != nil {
		b.Fatalf("load generator printed %q: %v", out, err)
	}
	r.p50, r.p99, r.p999 = time.Duration(p50), time.Duration(p99), time.Duration(p999)
	return r
}

// loadgen keeps window queries outstanding on each of conns UDP sockets for
// dur, cycling through queries, and measures every reply's latency: a
// dnsperf-like closed loop that also reports percentiles.
func loadgen(dial func() (net.Conn, error), queries [][]byte, conns, window int, dur time.Duration) (loadResult, error) {
	base := time.Now()
	deadline := base.Add(dur)
	var wg sync.WaitGroup
	lats := make([][]time.Duration, conns)
	var sent, recvd atomic.Int64
	for c := range conns {
		conn, err := dial()
		if err != nil {
			return loadResult{}, err
		}
		defer conn.Close()
		g := &loadConn{conn: conn, base: base, tokens: make(chan struct{}, window), lats: make([]time.Duration, 0, 1<<18)}
		for range window {
			g.tokens <- struct{}{}
		}
		wg.Go(func() { sent.Add(int64(g.send(queries, deadline))) })
		wg.Go(func() { recvd.Add(int64(g.recv(deadline))); lats[c] = g.lats })
	}
	wg.Wait()
	all := slices.Concat(lats...)
	if len(all) == 0 {
		return loadResult{}, errors.New("no replies")
	}
	slices.Sort(all)
	return loadResult{
		qps:  float64(len(all)) / dur.Seconds(),
		p50:  all[len(all)/2],
		p99:  all[len(all)*99/100],
		p999: all[len(all)*999/1000],
		sent: int(sent.Load()), lost: int(sent.Load() - recvd.Load()),
	}, nil
}

// loadConn is one socket of the load generator; query IDs index sentAt.
type loadConn struct {
	conn   net.Conn
	base   time.Time
	tokens chan struct{}
	sentAt [65536]atomic.Int64
	lats   []time.Duration
}

func (g *loadConn) send(queries [][]byte, deadline time.Time) int {
	bufs := make([][]byte, len(queries))
	for i, q := range queries {
		bufs[i] = append([]byte(nil), q...)
	}
	n := 0
	for ; time.Now().Before(deadline); n++ {
		<-g.tokens
		q := bufs[n%len(bufs)]
		id := uint16(n)
		binary.BigEndian.PutUint16(q, id)
		g.sentAt[id].Store(int64(time.Since(g.base)))
		if _, err := g.conn.Write(q); err != nil {
			return n
		}
	}
	return n
}

// recv reads replies until half a second after the deadline; a lost reply
// gives its window slot back then, not before.
func (g *loadConn) recv(deadline time.Time) int {
	buf := make([]byte, 4096)
	_ = g.conn.SetReadDeadline(deadline.Add(500 * time.Millisecond))
	n := 0
	for {
		m, err := g.conn.Read(buf)
		if err != nil || m < 2 {
			return n
		}
		now := time.Since(g.base)
		g.lats = append(g.lats, now-time.Duration(g.sentAt[be16(buf)].Load()))
		n++
		select {
		case g.tokens <- struct{}{}:
		default:
		}
	}
}

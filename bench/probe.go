package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Probe is the `pierbench probe KIND` command, run by the cluster benchmark inside a
// box's network namespace (through nsenter, so the same binary serves pier's
// sandboxes and Docker's containers):
//
//	echo-server -addr IP:PORT     a TCP echo server
//	echo-client -addr IP:PORT     n request/response round trips; prints RTTs as JSON
//	appear -name N                prints "ready", reads an IP on stdin, then prints
//	                              "dns <unix ns>" and "tcp <unix ns>" when the name first
//	                              resolves and the IP first answers TCP
//	gone -name N -ip IP           prints "ready", waits for a line on stdin, then prints
//	                              when the name stops resolving and the IP stops answering
//	http-server -addr IP:PORT     answers one HTTP/1.0 request per connection
//	http-client -addr IP:PORT     n connections, each connect + GET + answer to EOF;
//	                              prints their durations as JSON
//	wg-tunnel -config F -mtu M    a wireguard-go device wgraw0 configured by F, until SIGTERM
func Probe(args []string, in io.Reader, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("probe: want echo-server, echo-client, appear, gone, http-server, http-client or wg-tunnel")
	}
	fs := flag.NewFlagSet("probe "+args[0], flag.ContinueOnError)
	addr := fs.String("addr", "", "TCP `ip:port`")
	n := fs.Int("n", 2000, "round trips (echo-client)")
	size := fs.Int("size", 64, "request size in bytes (echo-client)")
	name := fs.String("name", "", "name to resolve")
	ip := fs.String("ip", "", "address to reach (gone)")
	dns := fs.String("dns", "127.0.0.11:53", "DNS server")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after")
	cfg := fs.String("config", "", "wireguard-go UAPI configuration `file` (wg-tunnel)")
	mtu := fs.Int("mtu", 1420, "MTU of the TUN device (wg-tunnel)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "echo-server":
		return echoServer(*addr)
	case "echo-client":
		return echoClient(*addr, *n, *size, out)
	case "appear":
		return probeAppear(*name, *dns, *timeout, in, out)
	case "gone":
		return probeGone(*name, *ip, *dns, *timeout, in, out)
	case "http-server":
		return httpServer(*addr)
	case "http-client":
		return httpClient(*addr, *n, *timeout, out)
	case "wg-tunnel":
		return wgTunnel(*cfg, *mtu)
	}
	return fmt.Errorf("probe: unknown kind %q", args[0])
}

func echoServer(addr string) error {
	return serveTCP(addr, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// serveTCP calls handle for each connection to addr, in its own goroutine, and
// closes the connection after it.
func serveTCP(addr string, handle func(net.Conn)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}

// echoClient sends n requests of size bytes on one connection, each after the
// previous reply (TCP_RR), and prints the round trips in milliseconds.
func echoClient(addr string, n, size int, out io.Writer) error {
	var c net.Conn
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err = net.DialTimeout("tcp", addr, time.Second); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return err
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	req, resp := make([]byte, size), make([]byte, size)
	rtts := make([]float64, 0, n)
	for i := range n + 100 { // 100 warm-up rounds
		start := time.Now()
		if _, err := c.Write(req); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, resp); err != nil {
			return err
		}
		if i >= 100 {
			rtts = append(rtts, ms(time.Since(start)))
		}
	}
	return json.NewEncoder(out).Encode(rtts)
}

// resolver asks one DNS server for A records, one query at a time.
type resolver struct {
	conn net.Conn
	id   uint16
	buf  []byte
}

func newResolver(server string) (*resolver, error) {
	c, err := net.Dial("udp", server)
	if err != nil {
		return nil, err
	}
	return &resolver{conn: c, buf: make([]byte, 1500)}, nil
}

// answers sends one query; replied is false on a timeout.
func (r *resolver) answers(name string, timeout time.Duration) (n int, replied bool) {
	r.id++
	if _, err := r.conn.Write(buildQuery(r.id, name)); err != nil {
		time.Sleep(timeout)
		return 0, false
	}
	rc, an, err := readReply(r.conn, r.buf, r.id, time.Now().Add(timeout))
	if err != nil {
		return 0, false
	}
	if rc != 0 {
		return 0, true
	}
	return an, true
}

// answersTCP reports whether ip answers a TCP connection on port 9 (a reset from a
// box with nothing listening counts: the packet got there and back).
func answersTCP(ip string, timeout time.Duration) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "9"), timeout)
	if err == nil {
		c.Close()
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

func stamp(out io.Writer, what string) {
	fmt.Fprintf(out, "%s %d\n", what, time.Now().UnixNano())
}

// probeAppear polls the name from the start and the address once it is read.
func probeAppear(name, dns string, timeout time.Duration, in io.Reader, out io.Writer) error {
	res, err := newResolver(dns)
	if err != nil {
		return err
	}
	ipc := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(in).ReadString('\n')
		ipc <- strings.TrimSpace(line)
	}()
	fmt.Fprintln(out, "ready")
	var ip string
	dnsDone, tcpDone := false, false
	for deadline := time.Now().Add(timeout); !dnsDone || !tcpDone; {
		if time.Now().After(deadline) {
			fmt.Fprintf(out, "timeout dns=%v tcp=%v\n", dnsDone, tcpDone)
			return nil
		}
		select {
		case ip = <-ipc:
		default:
		}
		if !dnsDone {
			if n, _ := res.answers(name, 20*time.Millisecond); n > 0 {
				stamp(out, "dns")
				dnsDone = true
			}
		}
		if ip != "" && !tcpDone {
			if answersTCP(ip, 20*time.Millisecond) {
				stamp(out, "tcp")
				tcpDone = true
			}
		}
		time.Sleep(500 * time.Microsecond)
	}
	return nil
}

// probeGone waits for a line, then polls until the name no longer resolves (a reply
// without an answer) and the address no longer answers TCP.
func probeGone(name, ip, dns string, timeout time.Duration, in io.Reader, out io.Writer) error {
	res, err := newResolver(dns)
	if err != nil {
		return err
	}
	if n, _ := res.answers(name, time.Second); n == 0 {
		return fmt.Errorf("%s does not resolve before the failure", name)
	}
	if !answersTCP(ip, time.Second) {
		return fmt.Errorf("%s does not answer before the failure", ip)
	}
	fmt.Fprintln(out, "ready")
	if _, err := bufio.NewReader(in).ReadString('\n'); err != nil {
		return err
	}
	dnsDone, tcpDone := false, false
	for deadline := time.Now().Add(timeout); !dnsDone || !tcpDone; {
		if time.Now().After(deadline) {
			fmt.Fprintf(out, "timeout dns=%v tcp=%v\n", dnsDone, tcpDone)
			return nil
		}
		if !dnsDone {
			if n, replied := res.answers(name, 100*time.Millisecond); replied && n == 0 {
				stamp(out, "dns")
				dnsDone = true
			}
		}
		if !tcpDone && !answersTCP(ip, 100*time.Millisecond) {
			stamp(out, "tcp")
			tcpDone = true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// probeOut is a running probe: its stdin and the lines it prints.
type probeOut struct {
	stdin io.WriteCloser
	lines chan string
	wait  func() error
}

// startProbe runs `pierbench probe ARGS` in the network namespace ns and waits for
// its "ready" line.
func startProbe(self, ns string, args ...string) (*probeOut, error) {
	cmd := inNetnsNoCtx(ns, append([]string{self, "probe"}, args...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &probeOut{stdin: stdin, lines: make(chan string, 8)}
	p.wait = func() error {
		err := cmd.Wait()
		if err != nil {
			return fmt.Errorf("probe %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
		}
		return nil
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	select {
	case l, ok := <-p.lines:
		if ok && l == "ready" {
			return p, nil
		}
		stdin.Close()
		_ = cmd.Process.Kill()
		return nil, errors.Join(fmt.Errorf("probe %s did not start: %q", args[0], l), p.wait())
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		return nil, errors.Join(errors.New("probe did not get ready in 10 s"), p.wait())
	}
}

// results collects "what <unix ns>" lines until the probe ends, as times.
func (p *probeOut) results() (map[string]time.Time, error) {
	got := map[string]time.Time{}
	var other []string
	for l := range p.lines {
		var what string
		var ns int64
		if strings.HasPrefix(l, "timeout ") { // what did not happen stays absent
			continue
		}
		if _, err := fmt.Sscanf(l, "%s %d", &what, &ns); err == nil {
			got[what] = time.Unix(0, ns)
		} else {
			other = append(other, l)
		}
	}
	err := p.wait()
	if len(other) > 0 {
		err = errors.Join(err, errors.New(strings.Join(other, "; ")))
	}
	return got, err
}

func inNetnsNoCtx(ns string, argv ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + ns, "--"}, argv...)...)
}

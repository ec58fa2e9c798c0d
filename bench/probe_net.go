package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// httpResponse is what http-server answers to every request.
const httpResponse = "HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"

// httpServer answers each connection's request (read up to its empty line) with
// httpResponse and closes it: one HTTP/1.0 exchange per connection.
func httpServer(addr string) error {
	return serveTCP(addr, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" || line == "\n" {
				break
			}
		}
		_, _ = io.WriteString(c, httpResponse)
	})
}

// httpOnce connects to addr, sends one HTTP/1.0 GET and reads the answer to EOF.
func httpOnce(addr string) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: bench\r\n\r\n"); err != nil {
		return 0, err
	}
	n, err := io.Copy(io.Discard, c)
	if err == nil && n == 0 {
		err = fmt.Errorf("%s: empty answer", addr)
	}
	return time.Since(start), err
}

// httpClient waits up to timeout for addr to answer, then makes 20 unrecorded and n
// recorded exchanges, one at a time, and prints their durations in milliseconds.
func httpClient(addr string, n int, timeout time.Duration, out io.Writer) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := httpOnce(addr)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not answering within %s: %w", addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	times := make([]float64, 0, n)
	for i := range n + 20 {
		d, err := httpOnce(addr)
		if err != nil {
			return fmt.Errorf("exchange %d: %w", i, err)
		}
		if i >= 20 {
			times = append(times, ms(d))
		}
	}
	return json.NewEncoder(out).Encode(times)
}

// wgTunnel makes TUN device wgraw0 (MTU mtu) in the current network namespace with a
// wireguard-go device configured by the UAPI text in file cfg, and serves it until
// SIGTERM or SIGINT — the library pierd embeds, with none of pier's code around it.
func wgTunnel(cfg string, mtu int) error {
	text, err := os.ReadFile(cfg)
	if err != nil {
		return err
	}
	td, err := tun.CreateTUN("wgraw0", mtu)
	if err != nil {
		return fmt.Errorf("creating wgraw0: %w", err)
	}
	dev := device.NewDevice(td, conn.NewStdNetBind(), device.NewLogger(device.LogLevelError, "wgraw0: "))
	defer dev.Close()
	if err := dev.IpcSet(string(text)); err != nil {
		return fmt.Errorf("configuring wgraw0: %w", err)
	}
	if err := dev.Up(); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
	case <-dev.Wait():
	}
	return nil
}

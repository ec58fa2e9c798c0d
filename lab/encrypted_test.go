package lab

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/piernet/pier/internal/netlab"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
)

// TestLabEncryptedOverlay: `docker network create -d overlay -o encrypted` on real
// pierds. Every node reports its WireGuard mode; a 1 MiB TCP echo crosses from h1 to
// h2, and on the lab's underlay (captured on h1's port of its bridge) there is only WireGuard for
// it — no VXLAN frame of its VNI, no byte of the payload; `pier node rotate-key` on
// h2 completes with every node's acknowledgement and the connection opened before it
// keeps working; a SIGKILLed pierd (its userspace WireGuard dies with it) lets
// nothing of the network out in cleartext.
func TestLabEncryptedOverlay(t *testing.T) {
	l := up(t, 3)
	ok(t)(sh(t, l, "h1", "docker", "network", "create", "-d", "overlay", "-o", "encrypted", "--attachable", "sec"))
	if got := ok(t)(sh(t, l, "h1", "docker", "network", "inspect", "-f", "{{json .Options}}", "sec")); !strings.Contains(got, `"encrypted":""`) {
		t.Errorf("docker network inspect sec: options %s, want encrypted", got)
	}
	vniHex := ok(t)(sh(t, l, "h1", "docker", "network", "inspect", "-f", `{{index .Options "com.docker.network.driver.overlay.vxlanid_list"}}`, "sec"))
	var vni uint32
	for _, c := range vniHex {
		vni = vni*10 + uint32(c-'0')
	}
	nodes := ok(t)(pier(t, l, "h1", "node", "ls", "--format", "{{.Name}} {{.Capabilities}}"))
	if strings.Count(nodes, "encryption=wireguard-") != 3 {
		t.Errorf("pier node ls does not show every node's WireGuard mode:\n%s", nodes)
	}
	t.Logf("nodes:\n%s", nodes)
	ok(t)(pier(t, l, "h1", "sandbox", "create", "--name", "a", "--network", "sec"))
	nstest.Eventually(t, "sec on h2", 5*time.Second, func() bool { _, err := sh(t, l, "h2", "docker", "network", "inspect", "sec"); return err == nil })
	ok(t)(pier(t, l, "h2", "sandbox", "create", "--name", "b", "--network", "sec"))
	b := sandboxNS(t, l, "h2", "b")
	netlab.Serve(t, b, ":7777", func(c net.Conn) { defer c.Close(); _, _ = io.Copy(c, c) })
	to := netip.AddrPortFrom(sandboxAddr(t, l, "h2", "b", "sec"), 7777).String()
	a := sandboxNS(t, l, "h1", "a")

	lab, err := netns.Open(l.ClientNS)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	marker := make([]byte, 16)
	_, _ = rand.Read(marker)
	var mu sync.Mutex
	var wgFrames, vxFrames, marked int
	stop := netlab.Capture(t, lab, "lab-h1", func(f []byte) {
		mu.Lock()
		defer mu.Unlock()
		if bytes.Contains(f, marker) {
			marked++
		}
		if v, _, ok := netlab.VXLAN(f, 4789); ok && v == vni {
			vxFrames++
		}
		if _, _, proto, udp, ok := netlab.IPv4(f); ok && proto == unix.IPPROTO_UDP && len(udp) >= 4 && binary.BigEndian.Uint16(udp[2:4]) == 51820 {
			wgFrames++
		}
	})
	var conn net.Conn
	nstest.Eventually(t, "a TCP connection across the encrypted overlay", 10*time.Second, func() bool {
		c, err := netlab.Dial(t, a, "tcp4", to, time.Second)
		if err == nil {
			conn = c
		}
		return err == nil
	})
	defer conn.Close()
	echoMarked := func(what string, size int) {
		t.Helper()
		_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
		data := bytes.Repeat(marker, size/len(marker))
		go func() { _, _ = conn.Write(data) }()
		got := make([]byte, len(data))
		if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: echo of %d bytes: %v (equal %v)", what, len(data), err, bytes.Equal(got, data))
		}
	}
	echoMarked("1 MiB", 1<<20)

	// A rotation of h2's key, acknowledged by every node, with a session with each; the connection lives on.
	out := ok(t)(pier(t, l, "h2", "node", "rotate-key"))
	if !strings.Contains(out, "in use with every node") || strings.Contains(out, "not acknowledged") || strings.Contains(out, "no session") {
		t.Errorf("pier node rotate-key: %s", out)
	}
	t.Logf("rotate-key: %s", out)
	echoMarked("after a rotation", 64<<10)
	stop()
	mu.Lock()
	t.Logf("on the underlay: %d WireGuard datagrams, %d VXLAN frames of VNI %d, %d frames with the marker %s", wgFrames, vxFrames, vni, marked, hex.EncodeToString(marker))
	if wgFrames == 0 || vxFrames > 0 || marked > 0 {
		t.Fatalf("the encrypted overlay is not only WireGuard on the wire")
	}
	mu.Unlock()

	// h2's key changes behind pier's back (its key file is gone, as with a wiped data
	// root): at its next start it makes a new key, publishes it as a new generation,
	// and the encrypted network works again between h1 and h2.
	if err := l.Stop("h2"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(l.Hosts[1].Data, "wireguard", "private.key")); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(t.Context(), "h2"); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "a new connection across sec after h2's new key", 15*time.Second, func() bool {
		c, err := netlab.Dial(t, a, "tcp4", to, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return false
		}
		b := make([]byte, 1)
		_, err = io.ReadFull(c, b)
		return err == nil
	})

	// A crash of h1's pierd takes its userspace WireGuard device: nothing leaves.
	if err := l.Kill("h1"); err != nil {
		t.Fatal(err)
	}
	marked, vxFrames = 0, 0
	stop = netlab.Capture(t, lab, "lab-h1", func(f []byte) {
		mu.Lock()
		defer mu.Unlock()
		if bytes.Contains(f, marker) {
			marked++
		}
		if v, _, ok := netlab.VXLAN(f, 4789); ok && v == vni {
			vxFrames++
		}
	})
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	_, _ = conn.Write(bytes.Repeat(marker, 1000))
	time.Sleep(1500 * time.Millisecond) // TCP retransmits meanwhile
	stop()
	mu.Lock()
	defer mu.Unlock()
	if vxFrames > 0 || marked > 0 {
		t.Fatalf("with h1's pierd killed: %d VXLAN frames of the encrypted VNI and %d frames with the payload left", vxFrames, marked)
	}
}

// sandboxAddr is a sandbox's IPv4 address on network net.
func sandboxAddr(t *testing.T, l *Lab, host, name, net string) netip.Addr {
	t.Helper()
	out := ok(t)(pier(t, l, host, "sandbox", "inspect", name, "-f",
		`{{range .Endpoints}}{{if eq .Network "`+net+`"}}{{.IPv4Address}}{{end}}{{end}}`))
	p, err := netip.ParsePrefix(out)
	if err != nil {
		t.Fatalf("%s's address on %s: %q", name, net, out)
	}
	return p.Addr()
}

package bench

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// probeResult is what DNSProbe prints: one query at a time, so each RTT is the
// server's latency without queueing.
type probeResult struct {
	RTTs     []float64      `json:"rtts_ms"`
	Rcodes   map[string]int `json:"rcodes"`
	NoAnswer int            `json:"no_answer"` // NOERROR replies without answers
	Timeouts int            `json:"timeouts"`
}

// DNSProbe is the `pierbench dnsprobe` command, run inside a box's network
// namespace: it sends n A queries for names (round robin) to a server, one at a
// time, and prints a probeResult as JSON.
func DNSProbe(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("dnsprobe", flag.ContinueOnError)
	server := fs.String("server", "127.0.0.11:53", "DNS server `addr:port`")
	n := fs.Int("n", 500, "queries")
	timeout := fs.Duration("timeout", 2*time.Second, "per query")
	if err := fs.Parse(args); err != nil {
		return err
	}
	names := fs.Args()
	if len(names) == 0 {
		return errors.New("dnsprobe: no names")
	}
	conn, err := net.Dial("udp", *server)
	if err != nil {
		return err
	}
	defer conn.Close()
	res := probeResult{Rcodes: map[string]int{}}
	buf := make([]byte, 1500)
	for i := range *n {
		id := uint16(i)
		q := buildQuery(id, names[i%len(names)])
		start := time.Now()
		if _, err := conn.Write(q); err != nil {
			return err
		}
		rc, answers, err := readReply(conn, buf, id, start.Add(*timeout))
		if err != nil {
			res.Timeouts++
			continue
		}
		res.RTTs = append(res.RTTs, ms(time.Since(start)))
		res.Rcodes[rcodeName(rc)]++
		if rc == 0 && answers == 0 {
			res.NoAnswer++
		}
	}
	return json.NewEncoder(out).Encode(res)
}

// buildQuery encodes a recursive A query for name.
func buildQuery(id uint16, name string) []byte {
	b := make([]byte, 12, 12+len(name)+6)
	binary.BigEndian.PutUint16(b[0:], id)
	binary.BigEndian.PutUint16(b[2:], 0x0100) // RD
	binary.BigEndian.PutUint16(b[4:], 1)      // QDCOUNT
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		b = append(b, byte(len(label)))
		b = append(b, label...)
	}
	return append(b, 0, 0, 1, 0, 1) // root, QTYPE A, QCLASS IN
}

// parseReply returns the rcode and answer count of a reply to id.
func parseReply(b []byte, id uint16) (rcode int, answers int, ok bool) {
	if len(b) < 12 || binary.BigEndian.Uint16(b) != id || b[2]&0x80 == 0 {
		return 0, 0, false
	}
	return int(b[3] & 0x0f), int(binary.BigEndian.Uint16(b[6:])), true
}

// readReply reads until the reply to id arrives or the deadline passes.
func readReply(conn net.Conn, buf []byte, id uint16, deadline time.Time) (int, int, error) {
	if err := conn.SetReadDeadline(deadline); err != nil {
		return 0, 0, err
	}
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return 0, 0, err
		}
		if rc, an, ok := parseReply(buf[:n], id); ok {
			return rc, an, nil
		}
	}
}

func rcodeName(rc int) string {
	names := []string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"}
	if rc < len(names) {
		return names[rc]
	}
	return fmt.Sprintf("RCODE%d", rc)
}

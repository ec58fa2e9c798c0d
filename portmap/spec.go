package portmap

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/piernet/pier/errdefs"
)

// Proto is a transport protocol that can be published.
type Proto string

// Protocols.
const (
	TCP  Proto = "tcp"
	UDP  Proto = "udp"
	SCTP Proto = "sctp"
)

// Number returns the IANA protocol number (IPPROTO_*), or 0 if p is unknown.
func (p Proto) Number() uint8 {
	switch p {
	case TCP:
		return 6
	case UDP:
		return 17
	case SCTP:
		return 132
	}
	return 0
}

// Spec is one publishing request as given with -p.
//
// HostPort 0 asks for an ephemeral port. A host range (HostPortEnd >
// HostPort) either maps one-to-one onto an equally long container range, or,
// for a single container port, is searched for the first free port. An
// invalid HostIP means "the default": every address of each family the
// container has (or the network's default host IP).
type Spec struct {
	HostIP           netip.Addr
	HostPort         uint16
	HostPortEnd      uint16 // 0 or equal to HostPort: a single port
	ContainerPort    uint16
	ContainerPortEnd uint16 // 0 or equal to ContainerPort: a single port
	Proto            Proto
}

// syntax is appended to parse errors.
const syntax = "want [hostIP:][hostPort[-hostPortEnd]:]containerPort[-containerPortEnd][/tcp|udp|sctp]"

// ParseSpec parses Docker's -p syntax
// [hostIP:][hostPort[-hostPortEnd]:]containerPort[-containerPortEnd][/proto],
// with IPv6 host addresses in brackets ([::1]:8080:80). Like Docker it
// returns one Spec per container port: a container range becomes one Spec
// per port, each with its own host port (or host range, or 0). Errors are
// InvalidArgument and say what to change.
func ParseSpec(s string) ([]Spec, error) {
	sp, err := parseSpec(s)
	if err != nil {
		return nil, errdefs.InvalidArgument("invalid port spec %q: %v (%s)", s, err, syntax)
	}
	return sp.expand(), nil
}

func parseSpec(s string) (Spec, error) {
	rest, proto, err := splitProto(s)
	if err != nil {
		return Spec{}, err
	}
	ip, host, ctr, err := splitParts(rest)
	if err != nil {
		return Spec{}, err
	}
	sp := Spec{Proto: proto}
	if sp.HostIP, err = parseHostIP(ip); err != nil {
		return Spec{}, err
	}
	if sp.ContainerPort, sp.ContainerPortEnd, err = parseRange(ctr, false); err != nil {
		return Spec{}, fmt.Errorf("container port: %w", err)
	}
	if sp.HostPort, sp.HostPortEnd, err = parseRange(host, true); err != nil {
		return Spec{}, fmt.Errorf("host port: %w", err)
	}
	return sp, sp.checkRanges()
}

// splitProto cuts "/proto" off s; the default is tcp.
func splitProto(s string) (string, Proto, error) {
	rest, p, found := strings.Cut(s, "/")
	if !found {
		return s, TCP, nil
	}
	proto := Proto(strings.ToLower(p))
	if proto.Number() == 0 {
		return "", "", fmt.Errorf("unknown protocol %q: use tcp, udp or sctp", p)
	}
	return rest, proto, nil
}

// splitParts splits "[ip:][host:]container"; an IPv6 ip is in brackets.
func splitParts(s string) (ip, host, ctr string, err error) {
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 || !strings.HasPrefix(s[end+1:], ":") {
			return "", "", "", fmt.Errorf("want [IPv6 address]:hostPort:containerPort")
		}
		host, ctr, ok := strings.Cut(s[end+2:], ":")
		if !ok || strings.Contains(ctr, ":") {
			return "", "", "", fmt.Errorf("want [IPv6 address]:hostPort:containerPort")
		}
		return s[1:end], host, ctr, nil
	}
	// Like Docker, an unbracketed IPv6 address is everything before the
	// last two colons.
	parts := strings.Split(s, ":")
	n := len(parts)
	switch n {
	case 1:
		return "", "", parts[0], nil
	case 2:
		return "", parts[0], parts[1], nil
	}
	return strings.Join(parts[:n-2], ":"), parts[n-2], parts[n-1], nil
}

// parseHostIP parses an optional host address; IPv4-mapped IPv6 addresses
// become IPv4.
func parseHostIP(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		hint := ""
		if strings.Contains(s, ":") {
			hint = "; put an IPv6 address in brackets, e.g. [::1]:8080:80"
		}
		return netip.Addr{}, fmt.Errorf("host IP %q is not an IPv4 or IPv6 address (without zone)%s", s, hint)
	}
	return a.Unmap(), nil
}

// parseRange parses "p" or "p-q". An empty host port, or host port 0,
// means ephemeral (0, 0).
func parseRange(s string, host bool) (uint16, uint16, error) {
	if host && (s == "" || s == "0") {
		return 0, 0, nil
	}
	lo, hi, isRange := strings.Cut(s, "-")
	first, err := parsePort(lo)
	if err != nil {
		return 0, 0, err
	}
	if !isRange {
		return first, first, nil
	}
	last, err := parsePort(hi)
	if err != nil {
		return 0, 0, err
	}
	if last < first {
		return 0, 0, fmt.Errorf("range %q ends before it starts", s)
	}
	return first, last, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 || strings.HasPrefix(s, "+") {
		return 0, fmt.Errorf("%q is not a port number 1-65535", s)
	}
	return uint16(n), nil
}

// checkRanges applies Docker's rule: ranges map one-to-one, except that a
// host range may serve a single container port.
func (s Spec) checkRanges() error {
	ctrLen := int(s.ContainerPortEnd) - int(s.ContainerPort)
	hostLen := int(s.HostPortEnd) - int(s.HostPort)
	if s.HostPort == 0 || ctrLen == 0 || ctrLen == hostLen {
		return nil
	}
	return fmt.Errorf("host ports %s and container ports %s differ in length; ranges map one-to-one (a host range is allowed for a single container port)",
		portRange(s.HostPort, s.HostPortEnd), portRange(s.ContainerPort, s.ContainerPortEnd))
}

// normalized returns s with zero end ports set to their start ports.
func (s Spec) normalized() Spec {
	if s.HostPortEnd == 0 {
		s.HostPortEnd = s.HostPort
	}
	if s.ContainerPortEnd == 0 {
		s.ContainerPortEnd = s.ContainerPort
	}
	return s
}

// expand returns one Spec per container port.
func (s Spec) expand() []Spec {
	s = s.normalized()
	if s.ContainerPort == s.ContainerPortEnd {
		return []Spec{s}
	}
	out := make([]Spec, 0, int(s.ContainerPortEnd-s.ContainerPort)+1)
	for i := 0; i <= int(s.ContainerPortEnd-s.ContainerPort); i++ {
		one := s
		one.ContainerPort += uint16(i)
		one.ContainerPortEnd = one.ContainerPort
		if s.HostPort != 0 {
			one.HostPort += uint16(i)
			one.HostPortEnd = one.HostPort
		}
		out = append(out, one)
	}
	return out
}

// String formats s in the -p syntax ParseSpec reads.
func (s Spec) String() string {
	s = s.normalized()
	var b strings.Builder
	if s.HostIP.IsValid() {
		if s.HostIP.Is6() {
			b.WriteString("[" + s.HostIP.String() + "]:")
		} else {
			b.WriteString(s.HostIP.String() + ":")
		}
	}
	if s.HostPort != 0 {
		b.WriteString(portRange(s.HostPort, s.HostPortEnd) + ":")
	} else if s.HostIP.IsValid() {
		b.WriteString(":")
	}
	b.WriteString(portRange(s.ContainerPort, s.ContainerPortEnd))
	proto := s.Proto
	if proto == "" {
		proto = TCP
	}
	return b.String() + "/" + string(proto)
}

func portRange(first, last uint16) string {
	if last <= first {
		return strconv.Itoa(int(first))
	}
	return fmt.Sprintf("%d-%d", first, last)
}

// Binding is one concrete published port: traffic to HostIP:HostPort/Proto
// goes to ContainerIP:ContainerPort. HostIP is never invalid: 0.0.0.0 or ::
// stand for every address of that family.
type Binding struct {
	HostIP        netip.Addr
	HostPort      uint16
	Proto         Proto
	ContainerIP   netip.Addr
	ContainerPort uint16
}

// Proxied reports whether only the proxy can serve b: its host and container
// addresses are of different families, which the kernel cannot NAT between (an
// IPv4-only container published on ::, as Docker's userland proxy does).
func (b Binding) Proxied() bool { return b.HostIP.Is4() != b.ContainerIP.Is4() }

// String formats b like `docker ps`: "0.0.0.0:8080->80/tcp".
func (b Binding) String() string {
	return fmt.Sprintf("%s->%d/%s", netip.AddrPortFrom(b.HostIP, b.HostPort), b.ContainerPort, b.Proto)
}

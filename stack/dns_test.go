package stack

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/etcfiles"
	"github.com/piernet/pier/netns"
)

// lookup resolves name with Go's resolver from inside the sandbox, through the
// nameserver its resolv.conf names.
func lookup(t *testing.T, e *env, sb cnm.Sandbox, name string) ([]string, error) {
	t.Helper()
	_, resolv, _ := etcfiles.Paths(e.s.Controller.Dir(sb))
	conf, err := os.ReadFile(resolv)
	if err != nil {
		t.Fatal(err)
	}
	p := etcfiles.ParseResolvConf(conf)
	if len(p.Nameservers) == 0 {
		t.Fatalf("resolv.conf has no nameserver:\n%s", conf)
	}
	server := net.JoinHostPort(p.Nameservers[0].String(), "53")
	ns, err := netns.Open(sb.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() (err error) { c, err = net.DialTimeout(network, server, time.Second); return })
		return c, err
	}}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	return r.LookupHost(ctx, name)
}

// queryA asks the sandbox's nameserver for name's A records with a plain DNS
// query. Go's resolver refuses all-digit names ("no such host" without asking),
// and a 12-character short ID is all digits about once in 280 sandboxes, so
// short IDs are checked this way; glibc and busybox do send such queries.
func queryA(t *testing.T, e *env, sb cnm.Sandbox, name string) []string {
	t.Helper()
	ns, err := netns.Open(sb.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	var conn net.Conn
	if err := ns.Do(func() (err error) { conn, err = net.DialTimeout("udp", "127.0.0.11:53", time.Second); return }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	c := &dns.Client{Timeout: 3 * time.Second}
	in, _, err := c.ExchangeWithConn(m, &dns.Conn{Conn: conn})
	if err != nil {
		t.Fatalf("query %q: %v", name, err)
	}
	var got []string
	for _, rr := range in.Answer {
		if a, ok := rr.(*dns.A); ok {
			got = append(got, a.A.String())
		}
	}
	return got
}

func TestControllerFeedsEmbeddedDNS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if err := e.s.Controller.EnsurePredefined(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	e.network(cnm.NetworkSpec{Name: "app"})
	e.network(cnm.NetworkSpec{Name: "other"})
	web := e.sandbox("web", "app")
	client := e.sandbox("client", "app")
	stranger := e.sandbox("stranger", "other")
	plain := e.sandbox("plain", "bridge")
	_, resolv, _ := etcfiles.Paths(e.s.Controller.Dir(client))
	if b, _ := os.ReadFile(resolv); !strings.Contains(string(b), "nameserver 127.0.0.11") || !strings.Contains(string(b), "ndots:0") {
		t.Fatalf("user-defined network resolv.conf:\n%s", b)
	}
	want := e.addr("web", "app", false).String()
	for _, name := range []string{"web", "WEB", "web.app"} {
		got, err := lookup(t, e, client, name)
		if err != nil || len(got) != 1 || got[0] != want {
			t.Errorf("client resolving %q = %v, %v; want [%s]", name, got, err, want)
		}
	}
	if got := queryA(t, e, client, web.ID[:12]); len(got) != 1 || got[0] != want {
		t.Errorf("client resolving short ID %q = %v; want [%s]", web.ID[:12], got, want)
	}
	if got, err := lookup(t, e, stranger, "web"); err == nil {
		t.Errorf("sandbox on another network resolved web: %v", got)
	}
	_, plainResolv, _ := etcfiles.Paths(e.s.Controller.Dir(plain))
	if b, _ := os.ReadFile(plainResolv); strings.Contains(string(b), "127.0.0.11") {
		t.Errorf("default bridge sandbox must keep the host's resolvers:\n%s", b)
	}
	// Leaving removes the name at once.
	if err := e.s.Controller.Disconnect(t.Context(), "app", "web"); err != nil {
		t.Fatal(err)
	}
	if got, err := lookup(t, e, client, "web"); err == nil {
		t.Errorf("web still resolves after leaving: %v", got)
	}
	// A restart brings the listeners and names back.
	if _, err := e.s.Controller.Connect(t.Context(), "app", "web", cnm.EndpointSpec{Aliases: []string{"www"}}); err != nil {
		t.Fatal(err)
	}
	e.reopen()
	client, _ = e.s.Controller.Sandbox(t.Context(), "client")
	if got, err := lookup(t, e, client, "www"); err != nil || len(got) != 1 {
		t.Errorf("alias after restart: %v, %v", got, err)
	}
}

// TestLinks: docker's --link. On a user-defined network the alias resolves through
// the embedded DNS, for the linking sandbox only; on the default bridge (no embedded
// DNS) it is written to the linking sandbox's /etc/hosts. A link to a sandbox that
// does not exist is refused.
func TestLinks(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.s.Controller
	if err := c.EnsurePredefined(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	e.network(cnm.NetworkSpec{Name: "app"})
	e.sandbox("web", "app", "bridge")
	other := e.sandbox("other", "app")
	client, err := c.CreateSandbox(t.Context(), cnm.SandboxSpec{Name: "client"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(t.Context(), "bridge", "client", cnm.EndpointSpec{Links: []string{"nosuch:x"}}); !errdefs.Is(err, errdefs.KindNotFound) {
		t.Fatalf("default-bridge link to a missing sandbox: %v, want NotFound (as Docker)", err)
	}
	// On a user network a link to a sandbox that does not exist yet is stored (Docker).
	if _, err := c.Connect(t.Context(), "app", "client", cnm.EndpointSpec{Links: []string{"web:webby", "later:soon"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(t.Context(), "bridge", "client", cnm.EndpointSpec{Links: []string{"web:oldweb"}}); err != nil {
		t.Fatal(err)
	}
	if got, err := lookup(t, e, client, "soon"); err == nil {
		t.Errorf("link alias soon resolved before its target exists: %v", got)
	}
	e.sandbox("later", "app")
	if got, err := lookup(t, e, client, "soon"); err != nil || len(got) != 1 || got[0] != e.addr("later", "app", false).String() {
		t.Errorf("link alias soon after its target was created = %v, %v; want [%s]", got, err, e.addr("later", "app", false))
	}
	if err := c.DeleteSandbox(t.Context(), "later", true); err != nil {
		t.Fatal(err)
	}
	if got, err := lookup(t, e, client, "soon"); err == nil {
		t.Errorf("link alias soon still resolves after its target was removed: %v", got)
	}
	want := e.addr("web", "app", false).String()
	if got, err := lookup(t, e, client, "webby"); err != nil || len(got) != 1 || got[0] != want {
		t.Errorf("client resolving its link alias webby = %v, %v; want [%s]", got, err, want)
	}
	if got, err := lookup(t, e, other, "webby"); err == nil {
		t.Errorf("a sandbox without the link resolved webby: %v", got)
	}
	hosts, _, _ := etcfiles.Paths(e.s.Controller.Dir(client))
	b, err := os.ReadFile(hosts)
	if err != nil {
		t.Fatal(err)
	}
	if line := e.addr("web", "bridge", false).String() + "\toldweb web\n"; !strings.Contains(string(b), line) {
		t.Errorf("hosts of the linking sandbox lacks %q:\n%s", line, b)
	}
	// A legacy link needs the linked sandbox on that network (Docker's rule).
	if _, err := c.CreateSandbox(t.Context(), cnm.SandboxSpec{Name: "c2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Connect(t.Context(), "bridge", "c2", cnm.EndpointSpec{Links: []string{"other"}}); !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Errorf("default-bridge link to a sandbox not on it: %v, want InvalidArgument", err)
	}
}

package cli

import (
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSandboxCreateRequest(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{{
		name: "minimal",
		args: []string{"--name", "web"},
		want: `{"Name":"web","Hostname":"","HostNetwork":false,"Networks":null,"DNS":null,"DNSSearch":null,"DNSOptions":null,"ExtraHosts":null}`,
	}, {
		name: "all flags; ip, ip6 and alias go to the first network",
		args: []string{"--name", "web", "-h", "www", "--network", "app", "--net", "backend", "--ip", "10.89.0.10",
			"--ip6", "fd00::10", "--alias", "a", "--alias", "b", "--dns", "10.0.0.53", "--dns-search", "example.com",
			"--dns-option", "ndots:2", "--add-host", "db:10.0.0.5", "--add-host", "gw:10.0.0.1"},
		want: `{"Name":"web","Hostname":"www","HostNetwork":false,
			"Networks":[{"Network":"app","IPv4Address":"10.89.0.10","IPv6Address":"fd00::10","Aliases":["a","b"]},
			            {"Network":"backend","IPv4Address":"","IPv6Address":"","Aliases":null}],
			"DNS":["10.0.0.53"],"DNSSearch":["example.com"],"DNSOptions":["ndots:2"],"ExtraHosts":["db:10.0.0.5","gw:10.0.0.1"]}`,
	}, {
		name: "a task of a service",
		args: []string{"--name", "web1", "--service", "web"},
		want: `{"Name":"web1","Hostname":"","HostNetwork":false,"Networks":null,"DNS":null,"DNSSearch":null,"DNSOptions":null,"ExtraHosts":null,"Service":"web"}`,
	}, {
		name: "host network",
		args: []string{"--name", "h", "--network", "host"},
		want: `{"Name":"h","Hostname":"","HostNetwork":false,"Networks":[{"Network":"host","IPv4Address":"","IPv6Address":"","Aliases":null}],
			"DNS":null,"DNSSearch":null,"DNSOptions":null,"ExtraHosts":null}`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakePierd(t, map[string]reply{"POST /pier/v1/sandboxes": {201, `{"ID":"sb1","Name":"web"}`}})
			res := f.pier(t, "", append([]string{"sandbox", "create"}, tt.args...)...)
			if res.code != 0 || res.out != "sb1\n" {
				t.Fatalf("pier = %+v", res)
			}
			got := f.requests()
			if len(got) != 1 {
				t.Fatalf("requests = %+v", got)
			}
			if diff := cmp.Diff(jsonValue(t, tt.want), got[0].Body); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSandboxCreateRandomName(t *testing.T) {
	f := newFakePierd(t, map[string]reply{"POST /pier/v1/sandboxes": {201, `{"ID":"sb1"}`}})
	if res := f.pier(t, "", "sandbox", "create"); res.code != 0 {
		t.Fatalf("pier = %+v", res)
	}
	name, _ := f.requests()[0].Body.(map[string]any)["Name"].(string)
	if !regexp.MustCompile(`^[a-z]+_[a-z]+$`).MatchString(name) {
		t.Errorf("random name %q is not adjective_surname", name)
	}
}

func TestSandboxCreateRetriesTakenRandomName(t *testing.T) {
	f := newFakePierd(t, map[string]reply{"POST /pier/v1/sandboxes": {409, `{"message":"sandbox name is taken"}`}})
	res := f.pier(t, "", "sandbox", "create")
	if res.code != 1 || res.err != "Error response from pierd: sandbox name is taken\n" {
		t.Errorf("pier = %+v", res)
	}
	if n := len(f.requests()); n != 5 {
		t.Errorf("%d attempts, want 5", n)
	}
	f = newFakePierd(t, map[string]reply{"POST /pier/v1/sandboxes": {409, `{"message":"taken"}`}})
	if f.pier(t, "", "sandbox", "create", "--name", "web"); len(f.requests()) != 1 {
		t.Errorf("a --name was retried")
	}
}

func TestSandboxCreateBadFlags(t *testing.T) {
	f := newFakePierd(t, nil)
	for _, args := range [][]string{{"--ip", "10.0.0.1"}, {"--alias", "x"}, {"--network", "app", "--ip", "fd00::1"}} {
		res := f.pier(t, "", append([]string{"sandbox", "create"}, args...)...)
		if res.code != 1 || !strings.HasPrefix(res.err, "Error: ") {
			t.Errorf("%v: pier = %+v", args, res)
		}
	}
	if got := f.requests(); len(got) != 0 {
		t.Errorf("sent %+v", got)
	}
}

const twoSandboxes = `[
 {"ID":"bbbbbbbbbbbbbbbbbbbb","Name":"web","Hostname":"www","Key":"/run/pier/netns/b","Endpoints":[
   {"Network":"app","IPv4Address":"10.89.0.2/24","IPv6Address":"fd00::2/64"},
   {"Network":"backend","IPv4Address":"10.90.0.2/24"}]},
 {"ID":"aaaaaaaaaaaaaaaaaaaa","Name":"db","Hostname":"aaaaaaaaaaaa","Endpoints":[]}]`

func TestSandboxLs(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{nil, "SANDBOX ID     NAME      NETWORKS      ADDRESSES\n" +
			"aaaaaaaaaaaa   db                      \n" +
			"bbbbbbbbbbbb   web       app,backend   10.89.0.2,fd00::2,10.90.0.2\n"},
		{[]string{"-q"}, "aaaaaaaaaaaa\nbbbbbbbbbbbb\n"},
		{[]string{"--format", "{{.Name}} {{.Hostname}} {{.Key}}"}, "db aaaaaaaaaaaa \nweb www /run/pier/netns/b\n"},
	}
	for _, tt := range tests {
		f := newFakePierd(t, map[string]reply{"GET /pier/v1/sandboxes": {200, twoSandboxes}})
		res := f.pier(t, "", append([]string{"sandbox", "ls"}, tt.args...)...)
		if res.code != 0 {
			t.Fatalf("%v: pier = %+v", tt.args, res)
		}
		if diff := cmp.Diff(tt.want, res.out); diff != "" {
			t.Errorf("%v: output (-want +got):\n%s", tt.args, diff)
		}
	}
}

func TestSandboxInspectAndRm(t *testing.T) {
	f := newFakePierd(t, map[string]reply{
		"GET /pier/v1/sandboxes/web":    {200, `{"ID":"b","Name":"web","Key":"/run/pier/netns/b"}`},
		"DELETE /pier/v1/sandboxes/web": {204, ""},
		"DELETE /pier/v1/sandboxes/db":  {404, `{"message":"sandbox db not found"}`},
	})
	if res := f.pier(t, "", "sandbox", "inspect", "-f", "{{.Key}}", "web"); res.out != "/run/pier/netns/b\n" || res.code != 0 {
		t.Errorf("inspect: %+v", res)
	}
	res := f.pier(t, "", "sandbox", "rm", "-f", "web", "db")
	if want := (result{out: "web\n", err: "Error response from pierd: sandbox db not found\n", code: 1}); res != want {
		t.Errorf("rm: %+v, want %+v", res, want)
	}
	got := f.requests()
	if len(got) != 3 || got[1].Query != "force=true" || got[2].Query != "force=true" {
		t.Errorf("requests = %+v, want force=true on the deletes", got)
	}
}

func TestHostFlagBeatsEnv(t *testing.T) {
	f := newFakePierd(t, map[string]reply{"GET /pier/v1/sandboxes": {200, `[]`}})
	res := f.pier(t, "", "-H", "unix:///nonexistent/pier.sock", "sandbox", "ls")
	if res.code != 1 || !strings.Contains(res.err, "cannot connect to pierd at unix:///nonexistent/pier.sock") {
		t.Errorf("pier = %+v", res)
	}
	if res := f.pier(t, "", "-H", "ftp://x", "sandbox", "ls"); res.code != 1 || !strings.Contains(res.err, "unsupported scheme") {
		t.Errorf("pier = %+v", res)
	}
}

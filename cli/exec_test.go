package cli

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/internal/nstest"
)

func TestEnterSpecArgs(t *testing.T) {
	s := enterSpec{netns: "/run/pier/netns/x", dir: "/run/pier/sb/x", hostname: "h", workdir: "/srv",
		argv: []string{"sh", "-c", "exit 7"}}
	want := []string{"__enter", "--netns", "/run/pier/netns/x", "--dir", "/run/pier/sb/x", "--hostname", "h",
		"--workdir", "/srv", "--", "sh", "-c", "exit 7"}
	if diff := cmp.Diff(want, s.args()); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
}

func TestCommandArgs(t *testing.T) {
	for _, tt := range []struct{ in, want []string }{
		{[]string{"--", "ls", "-l"}, []string{"ls", "-l"}},
		{[]string{"ls", "--", "x"}, []string{"ls", "--", "x"}},
		{[]string{"--"}, []string{}},
	} {
		if got := commandArgs(tt.in); !cmp.Equal(got, tt.want) {
			t.Errorf("commandArgs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestExitCodes(t *testing.T) {
	for _, tt := range []struct {
		script string
		want   int
	}{{"exit 0", 0}, {"exit 7", 7}, {"kill -TERM $$", 143}, {"kill -KILL $$", 137}} {
		code, err := runForwardingSignals(exec.Command("/bin/sh", "-c", tt.script))
		if err != nil || code != tt.want {
			t.Errorf("%q: code %d, err %v; want %d", tt.script, code, err, tt.want)
		}
	}
	if _, err := runForwardingSignals(exec.Command("/nonexistent/binary")); err == nil {
		t.Error("starting a missing binary did not fail")
	}
}

func TestEnvironFlags(t *testing.T) {
	p := procFlags{env: []string{"A=1", "B", "UNSET"}}
	env := p.environ(func(k string) string { return map[string]string{"B": "two"}[k] })
	tail := env[len(env)-2:]
	if diff := cmp.Diff([]string{"A=1", "B=two"}, tail); diff != "" {
		t.Errorf("environ tail (-want +got):\n%s", diff)
	}
}

func TestExecErrors(t *testing.T) {
	f := newFakePierd(t, map[string]reply{
		"GET /pier/v1/sandboxes/nope":  {404, `{"message":"sandbox nope not found"}`},
		"POST /pier/v1/sandboxes":      {404, `{"message":"network nope not found"}`},
		"DELETE /pier/v1/sandboxes/sb": {204, ""},
	})
	tests := []struct {
		args []string
		res  result
	}{
		{[]string{"exec", "nope", "--", "true"}, result{err: "Error response from pierd: sandbox nope not found\n", code: 125}},
		{[]string{"exec", "web"}, result{err: "pier exec: \"pier exec\" requires at least 2 arguments\nSee 'pier exec --help'.\n", code: 125}},
		{[]string{"exec", "web", "--"}, result{err: "pier exec: no command given after \"--\"\nSee 'pier exec --help'.\n", code: 125}},
		{[]string{"run", "--rm", "--network", "nope", "--", "true"}, result{err: "Error response from pierd: network nope not found\n", code: 125}},
		{[]string{"run", "--rm"}, result{err: "pier run: \"pier run\" requires at least 1 argument\nSee 'pier run --help'.\n", code: 125}},
	}
	for _, tt := range tests {
		if res := f.pier(t, "", tt.args...); res != tt.res {
			t.Errorf("%q: pier = %+v, want %+v", tt.args, res, tt.res)
		}
	}
}

// fakeSandbox returns a sandbox whose Key is a fresh pinned network namespace and whose
// Dir holds hosts, resolv.conf and hostname files.
func fakeSandbox(t *testing.T) types.SandboxInfo {
	t.Helper()
	key, _ := nstest.NewPinned(t)
	dir := t.TempDir()
	files := map[string]string{"hosts": "127.0.0.1\tlocalhost\n10.89.0.2\tsbhost web\n",
		"resolv.conf": "nameserver 10.89.0.53\n", "hostname": "sbhost\n"}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return types.SandboxInfo{ID: "sb", Name: "web", Hostname: "sbhost", Key: key, Dir: dir}
}

func sandboxJSON(t *testing.T, sb types.SandboxInfo) string {
	t.Helper()
	data, err := json.Marshal(sb)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestExecInSandbox runs commands in a real (pinned, fresh) network namespace with the
// sandbox's files, through the re-executed test binary.
func TestExecInSandbox(t *testing.T) {
	nstest.Require(t, "root", "busybox")
	sb := fakeSandbox(t)
	f := newFakePierd(t, map[string]reply{"GET /pier/v1/sandboxes/web": {200, sandboxJSON(t, sb)}})
	hostHosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatal(err)
	}
	hostName, _ := os.Hostname()
	tests := []struct {
		name string
		args []string
		want result
	}{
		{"etc files", []string{"cat", "/etc/hostname", "/etc/resolv.conf"}, result{out: "sbhost\nnameserver 10.89.0.53\n"}},
		{"hosts", []string{"grep", "web", "/etc/hosts"}, result{out: "10.89.0.2\tsbhost web\n"}},
		{"uts hostname", []string{"busybox", "hostname"}, result{out: "sbhost\n"}},
		{"own netns: only lo", []string{"sh", "-c", "busybox ip -o link | cut -d: -f2"}, result{out: " lo\n"}},
		{"exit status", []string{"sh", "-c", "exit 7"}, result{code: 7}},
		{"stdin and env", []string{"sh", "-c", "read x; echo $x $PIER_T"}, result{out: "hello 1\n"}},
		{"not found", []string{"no-such-command-xyz"}, result{code: 127,
			err: "pier: exec: \"no-such-command-xyz\": executable file not found in $PATH\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("PIER_T", "1")
			res := f.pier(t, "hello\n", append([]string{"exec", "web", "--"}, tt.args...)...)
			if res != tt.want {
				t.Errorf("pier = %+v, want %+v", res, tt.want)
			}
		})
	}
	after, _ := os.ReadFile("/etc/hosts")
	if name, _ := os.Hostname(); string(after) != string(hostHosts) || name != hostName {
		t.Errorf("the host changed: hostname %q→%q, /etc/hosts %q→%q", hostName, name, hostHosts, after)
	}
}

func TestRunRemovesSandbox(t *testing.T) {
	nstest.Require(t, "root")
	sb := fakeSandbox(t)
	f := newFakePierd(t, map[string]reply{
		"POST /pier/v1/sandboxes":      {201, sandboxJSON(t, sb)},
		"DELETE /pier/v1/sandboxes/sb": {204, ""},
	})
	res := f.pier(t, "", "run", "--rm", "--network", "app", "--name", "web", "--", "sh", "-c", "cat /etc/hostname; exit 3")
	if want := (result{out: "sbhost\n", code: 3}); res != want {
		t.Errorf("pier = %+v, want %+v", res, want)
	}
	got := f.requests()
	if len(got) != 2 || got[1].Method != "DELETE" || got[1].Path != "/pier/v1/sandboxes/sb" || got[1].Query != "force=true" {
		t.Errorf("requests = %+v, want create then a forced delete", got)
	}
	f = newFakePierd(t, map[string]reply{"POST /pier/v1/sandboxes": {201, sandboxJSON(t, sb)}})
	if res := f.pier(t, "", "run", "--", "true"); res.code != 0 || len(f.requests()) != 1 {
		t.Errorf("without --rm: pier = %+v, requests %+v", res, f.requests())
	}
}

func TestEnterRefusesHostNamespaces(t *testing.T) {
	f := newFakePierd(t, nil)
	res := f.pier(t, "", "__enter", "--netns", "/proc/self/ns/net", "--", "true")
	if res.code != 125 || !strings.Contains(res.err, "must be started by pier exec") {
		t.Errorf("pier = %+v", res)
	}
}

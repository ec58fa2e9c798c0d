package plugin_test

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/plugin"
	"github.com/piernet/pier/plugin/plugintest"
)

func TestCallSendsDockersRequest(t *testing.T) {
	s := plugintest.New(t, "NetworkDriver")
	s.OK("NetworkDriver.Leave", `{}`)
	p := s.Plugin(t, "p", time.Second)
	if err := p.Client.Call(t.Context(), "NetworkDriver.Leave", map[string]string{"NetworkID": "n"}, &struct{}{}); err != nil {
		t.Fatal(err)
	}
	if err := p.Client.Call(t.Context(), "NetworkDriver.Leave", nil, nil); err != nil {
		t.Fatal(err)
	}
	calls := s.Calls()
	if calls[0].Body != "{\"NetworkID\":\"n\"}\n" || calls[0].Accept != plugin.MediaType || calls[1].Body != "" {
		t.Errorf("calls = %+v, want a JSON body, then an empty one, Accept %s", calls, plugin.MediaType)
	}
}

func TestCallErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		reply    plugintest.Reply
		kind     errdefs.Kind
		msg      string
		refused  bool
		notFound bool
	}{
		"Err body": {reply: plugintest.Reply{Status: 500, Body: `{"Err":"no such network"}`},
			msg: `plugin "p": NetworkDriver.Join: no such network (HTTP 500)`, refused: true},
		"text body": {reply: plugintest.Reply{Status: 400, Body: "bad request\n"},
			msg: `plugin "p": NetworkDriver.Join: bad request (HTTP 400)`, refused: true},
		"hang": {reply: plugintest.Reply{Hang: true}, kind: errdefs.KindUnavailable,
			msg: `plugin "p": NetworkDriver.Join: no reply within 100ms (the plugin may be hung)`},
		"drop": {reply: plugintest.Reply{Drop: true}, kind: errdefs.KindUnavailable,
			msg: `plugin "p": NetworkDriver.Join: plugin unreachable or died during the call`},
		"garbage": {reply: plugintest.Reply{Body: `{"InterfaceName": {"SrcName": 12`}, kind: errdefs.KindInternal,
			msg: `plugin "p": NetworkDriver.Join: malformed reply: unexpected end of JSON input (reply: {"InterfaceName": {"SrcName": 12)`},
		"wrong type": {reply: plugintest.Reply{Body: `{"Gateway": 1}`}, kind: errdefs.KindInternal, msg: "malformed reply: json: cannot unmarshal"},
	} {
		s := plugintest.New(t, "NetworkDriver")
		s.Set("NetworkDriver.Join", tc.reply)
		p := s.Plugin(t, "p", 100*time.Millisecond)
		start := time.Now()
		err := p.Client.Call(t.Context(), "NetworkDriver.Join", struct{}{}, &struct{ Gateway string }{})
		if err == nil || !strings.Contains(err.Error(), tc.msg) || errdefs.KindOf(err) != tc.kind {
			t.Errorf("%s: err = %v (kind %v), want %v containing %q", name, err, errdefs.KindOf(err), tc.kind, tc.msg)
		}
		if plugin.Refused(err) != tc.refused {
			t.Errorf("%s: Refused = %v, want %v", name, !tc.refused, tc.refused)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: took %s", name, d)
		}
	}
}

func TestIsNotFound(t *testing.T) {
	s := plugintest.New(t, "NetworkDriver")
	p := s.Plugin(t, "p", time.Second)
	err := p.Client.Call(t.Context(), "NetworkDriver.ProgramExternalConnectivity", struct{}{}, &struct{}{})
	if !plugin.IsNotFound(err) || !plugin.Refused(err) {
		t.Errorf("unimplemented method: %v, want a 404 StatusError", err)
	}
}

func TestLoader(t *testing.T) {
	s := plugintest.New(t, "IpamDriver")
	dir := t.TempDir()
	l := plugin.NewLoader(plugin.Options{Dirs: plugin.Dirs{Sockets: []string{dir}}})
	if _, err := l.Get(t.Context(), "pool", plugin.IpamDriver); !errdefs.Is(err, errdefs.KindNotFound) ||
		!strings.Contains(err.Error(), `plugin "pool" not found (looked in `+dir+")") {
		t.Fatalf("missing plugin: %v", err)
	}
	l = plugin.NewLoader(plugin.Options{Dirs: plugin.Dirs{Sockets: []string{strings.TrimSuffix(s.Sock, "/p.sock")}}})
	p, err := l.Get(t.Context(), "p", plugin.IpamDriver)
	if err != nil || p.Name != "p" {
		t.Fatalf("Get = %+v, %v", p, err)
	}
	if _, err := l.Get(t.Context(), "p", plugin.NetworkDriver); !errdefs.Is(err, errdefs.KindNotFound) ||
		!strings.Contains(err.Error(), "does not implement NetworkDriver (it implements IpamDriver)") {
		t.Errorf("wrong subsystem: %v", err)
	}
	if n := len(s.Methods()); n != 0 {
		t.Errorf("%d calls besides activation", n)
	}
}

func TestActivateFailures(t *testing.T) {
	s := plugintest.New(t)
	p, _ := plugin.NewClient(s.Spec("p"), time.Second)
	if _, err := plugin.Activate(t.Context(), p); err == nil || !strings.Contains(err.Error(), "implements nothing") {
		t.Errorf("empty Implements: %v", err)
	}
	s.Set("Plugin.Activate", plugintest.Reply{Status: 500, Body: `{"Err":"not ready"}`})
	if _, err := plugin.Activate(t.Context(), p); err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Errorf("refused activation: %v", err)
	}
}

// TestActivateWaitsForAStartingPlugin: a plugin that has created its socket but does
// not listen yet refuses connections; activation retries (as Docker does) instead of
// failing, and still fails fast when nothing is there at all.
func TestActivateWaitsForAStartingPlugin(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "late.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), sock)
	t.Cleanup(func() { f.Close() })
	go func() {
		time.Sleep(150 * time.Millisecond) // the plugin is still starting
		if err := unix.Listen(fd, 8); err != nil {
			t.Error(err)
			return
		}
		ln, err := net.FileListener(f)
		if err != nil {
			t.Error(err)
			return
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(`{"Implements": ["NetworkDriver"]}`))
		})}
		t.Cleanup(func() { srv.Close() })
		_ = srv.Serve(ln)
	}()
	l := plugin.NewLoader(plugin.Options{Dirs: plugin.Dirs{Sockets: []string{dir}}, Timeout: time.Second})
	start := time.Now()
	if _, err := l.Get(t.Context(), "late", plugin.NetworkDriver); err != nil {
		t.Fatalf("activating a plugin that listens 150 ms after creating its socket: %v", err)
	}
	if took := time.Since(start); took < 100*time.Millisecond {
		t.Errorf("activated after %v: the socket was not listening yet", took)
	}
}

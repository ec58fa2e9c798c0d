package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/internal/nstest"
)

var (
	buildOnce sync.Once
	binDir    string
	binErr    error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// pierdBinary builds cmd/pierd once per test binary.
func pierdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "pierd-test-"); binErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", binDir, "github.com/piernet/pier/cmd/pierd").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("building pierd: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "pierd")
}

// pierd is a pierd process running in its own network namespace (a pinned one, so a
// restarted pierd finds the same "host"), with its own roots and socket.
type pierd struct {
	t        *testing.T
	bin      string
	hostNS   string
	dir      string
	dataRoot string
	execRoot string
	sock     string
	extra    []string

	cmd    *exec.Cmd
	log    *syncBuffer
	exited chan struct{}
}

func newPierd(t *testing.T, extra ...string) *pierd {
	t.Helper()
	nstest.Require(t, "root", "nsenter")
	bin := pierdBinary(t)
	hostNS, _ := nstest.NewPinned(t)
	dir := t.TempDir()
	d := &pierd{t: t, bin: bin, hostNS: hostNS, dir: dir, dataRoot: filepath.Join(dir, "data"),
		execRoot: filepath.Join(dir, "exec"), sock: filepath.Join(dir, "pier.sock"), extra: extra}
	t.Cleanup(d.cleanup)
	return d
}

// args are the command line of this pierd (nsenter puts it in its namespace).
func (d *pierd) args(sock string) []string {
	return append([]string{"--net=" + d.hostNS, "--", d.bin, "--data-root", d.dataRoot, "--exec-root", d.execRoot,
		"-H", "unix://" + sock, "--log-level", "debug"}, d.extra...)
}

// start starts pierd and waits until it answers /_ping.
func (d *pierd) start() {
	d.t.Helper()
	d.log = &syncBuffer{}
	d.cmd = exec.Command("nsenter", d.args(d.sock)...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.exited = make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(d.exited) }()
	if _, ok := nstest.Poll(20*time.Second, func() bool {
		select {
		case <-d.exited:
			d.t.Fatalf("pierd exited during start: %v\n%s", d.cmd.ProcessState, d.log)
		default:
		}
		r, err := d.request("GET", "/_ping", nil)
		return err == nil && r.status == 200
	}); ok {
		return
	}
	d.t.Fatalf("pierd did not answer on %s within 20s\n%s", d.sock, d.log)
}

// stop sends sig and waits for pierd to exit; it returns the exit state.
func (d *pierd) stop(sig syscall.Signal) *os.ProcessState {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.t.Fatalf("pierd did not exit within 30s of %v\n%s", sig, d.log)
	}
	return d.cmd.ProcessState
}

// cleanup kills pierd if it still runs and removes what it left in the mount table.
func (d *pierd) cleanup() {
	if d.cmd != nil && d.cmd.ProcessState == nil {
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
	if d.t.Failed() && d.log != nil {
		d.t.Logf("pierd log:\n%s", d.log)
	}
	pins, _ := filepath.Glob(filepath.Join(d.execRoot, "netns", "*"))
	for _, p := range pins {
		_ = unix.Unmount(p, unix.MNT_DETACH)
	}
}

type reply struct {
	status int
	body   []byte
}

func (d *pierd) httpClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", d.sock)
		}}}
}

// request sends a raw HTTP request to pierd's socket.
func (d *pierd) request(method, path string, body io.Reader) (reply, error) {
	req, err := http.NewRequest(method, "http://pierd"+path, body)
	if err != nil {
		return reply{}, err
	}
	resp, err := d.httpClient().Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, body: data}, err
}

// sandbox creates a sandbox through pier's route.
func (d *pierd) sandbox(req types.SandboxCreateRequest) types.SandboxInfo {
	d.t.Helper()
	data, _ := json.Marshal(req)
	r, err := d.request("POST", "/pier/v1/sandboxes", bytes.NewReader(data))
	if err != nil || r.status != 201 {
		d.t.Fatalf("creating sandbox %s: %v %d %s", req.Name, err, r.status, r.body)
	}
	var info types.SandboxInfo
	if err := json.Unmarshal(r.body, &info); err != nil {
		d.t.Fatal(err)
	}
	return info
}

// docker runs the real docker CLI against pierd.
func (d *pierd) docker(args ...string) (string, error) {
	d.t.Helper()
	cmd := exec.Command("docker", append([]string{"-H", "unix://" + d.sock}, args...)...)
	cmd.Env = dockerEnv(d.dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// mustDocker runs docker and returns its trimmed output, failing the test on error.
func (d *pierd) mustDocker(args ...string) string {
	d.t.Helper()
	out, err := d.docker(args...)
	if err != nil {
		d.t.Fatalf("docker %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(out)
}

// dockerEnv is the environment without Docker settings that would redirect the CLI.
func dockerEnv(dir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DOCKER_") {
			env = append(env, kv)
		}
	}
	return append(env, "DOCKER_CONFIG="+filepath.Join(dir, "docker-config"), "DOCKER_CLI_HINTS=false")
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// execOutput runs a command and returns its combined output.
func execOutput(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

package daemon_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestPythonSDK runs testdata/pysdk with Debian's python3-docker and pytest against a
// pierd in a test namespace. Without them the test is skipped, unless CI is set (.ci/run
// installs them): then it fails.
func TestPythonSDK(t *testing.T) {
	t.Parallel()
	// Debian's package first: a newer docker-py from pip must not stand in for it.
	env := append(dockerEnv(t.TempDir()), "PYTHONPATH=/usr/lib/python3/dist-packages", "PYTHONDONTWRITEBYTECODE=1")
	probe := exec.Command("python3", "-c", "import docker, pytest; print(docker.__file__, docker.__version__)")
	probe.Env = env
	out, err := probe.CombinedOutput()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("python3-docker and python3-pytest are required in CI: %v\n%s", err, out)
		}
		t.Skipf("python3-docker or python3-pytest is not installed: %s", out)
	}
	t.Logf("docker-py: %s", strings.TrimSpace(string(out)))
	d := newPierd(t)
	d.start()
	cmd := exec.Command("python3", "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", "testdata/pysdk")
	cmd.Env = append(env, "DOCKER_HOST=unix://"+d.sock)
	out, err = cmd.CombinedOutput()
	t.Logf("pytest:\n%s", out)
	if err != nil {
		t.Fatalf("pytest failed: %v", err)
	}
}

package api

import (
	"bufio"
	"bytes"
	"net/http"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
	"golang.org/x/sys/unix"
)

// ping answers /_ping: Docker clients read the headers to negotiate the API version.
func (s *Server) ping(w http.ResponseWriter, r *http.Request) error {
	h := w.Header()
	h.Set("Api-Version", APIVersion)
	h.Set("Ostype", "linux")
	h.Set("Docker-Experimental", "false")
	h.Set("Swarm", "inactive")
	h.Set("Cache-Control", "no-cache, no-store, must-revalidate")
	h.Set("Pragma", "no-cache")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	if r.Method == http.MethodHead {
		h.Set("Content-Length", "0")
		return nil
	}
	_, _ = w.Write([]byte("OK"))
	return nil
}

func (s *Server) version(w http.ResponseWriter, _ *http.Request) error {
	u := uname()
	details := map[string]string{"ApiVersion": APIVersion, "MinAPIVersion": MinAPIVersion, "GitCommit": "",
		"GoVersion": runtime.Version(), "Os": runtime.GOOS, "Arch": runtime.GOARCH, "KernelVersion": u.release,
		"Experimental": "false", "BuildTime": ""}
	writeJSON(w, http.StatusOK, system.VersionResponse{
		Platform:      system.PlatformInfo{Name: "pier"},
		Components:    []system.ComponentVersion{{Name: "Engine", Version: s.cfg.Version, Details: details}},
		Version:       s.cfg.Version,
		APIVersion:    APIVersion,
		MinAPIVersion: MinAPIVersion,
		GoVersion:     runtime.Version(),
		Os:            runtime.GOOS,
		Arch:          runtime.GOARCH,
		KernelVersion: u.release,
	})
	return nil
}

func (s *Server) info(w http.ResponseWriter, r *http.Request) error {
	u := uname()
	host, _ := os.Hostname()
	var si unix.Sysinfo_t
	_ = unix.Sysinfo(&si)
	info := system.Info{
		ID: s.cfg.ID, Name: host, ServerVersion: s.cfg.Version, Driver: "pier",
		OperatingSystem: osPrettyName(), OSType: "linux", Architecture: u.machine, KernelVersion: u.release,
		NCPU: runtime.NumCPU(), MemTotal: int64(si.Totalram) * int64(si.Unit), DockerRootDir: s.cfg.DataRoot,
		SystemTime: time.Now().Format(time.RFC3339Nano), NGoroutines: runtime.NumGoroutine(),
		IPv4Forwarding: ipv4Forwarding(), Labels: []string{}, SecurityOptions: []string{}, Warnings: []string{},
		Swarm:   swarm.Info{LocalNodeState: swarm.LocalNodeStateInactive},
		Plugins: system.PluginsInfo{Volume: []string{}, Network: s.cfg.Drivers, Authorization: []string{}, Log: []string{}},
	}
	info.Containers = len(s.c.Sandboxes(r.Context()))
	info.ContainersRunning = info.Containers
	writeJSON(w, http.StatusOK, info)
	return nil
}

type unameInfo struct{ release, machine string }

func uname() unameInfo {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return unameInfo{machine: runtime.GOARCH}
	}
	return unameInfo{release: unix.ByteSliceToString(u.Release[:]), machine: unix.ByteSliceToString(u.Machine[:])}
}

func osPrettyName() string {
	data, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return "Linux"
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "PRETTY_NAME="); ok {
			return strings.Trim(v, `"'`)
		}
	}
	return "Linux"
}

func ipv4Forwarding() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

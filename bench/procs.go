package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is one process as /proc shows it.
type proc struct {
	PID, PPID int
	Comm      string
	NetNS     uint64 // inode of its network namespace; 0 if unreadable
}

// listProcs reads every process of the machine. Processes that exit while it reads
// are skipped.
func listProcs() ([]proc, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, ok := readProc(pid)
		if ok {
			out = append(out, p)
		}
	}
	return out, nil
}

func readProc(pid int) (proc, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return proc{}, false
	}
	// pid (comm) state ppid ...; comm may contain spaces and parentheses.
	open, end := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return proc{}, false
	}
	fields := strings.Fields(string(data[end+1:]))
	if len(fields) < 2 {
		return proc{}, false
	}
	ppid, _ := strconv.Atoi(fields[1])
	ns, _ := nsInode(fmt.Sprintf("/proc/%d/ns/net", pid))
	return proc{PID: pid, PPID: ppid, Comm: string(data[open+1 : end]), NetNS: ns}, true
}

// cpuTime returns the CPU time a process (all its threads) has used in user space
// and in the kernel.
func cpuTime(pid int) (user, sys time.Duration) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return 0, 0
	}
	fields := strings.Fields(string(data[end+1:]))
	if len(fields) < 13 {
		return 0, 0
	}
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(ut) * time.Second / clockTicks, time.Duration(st) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTicks = 100

// nsInode returns the inode of a namespace file (/proc/PID/ns/net, /run/netns/NAME).
func nsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// procsIn returns the processes in the network namespaces inos and all their
// descendants (a container's processes live in the container's own namespace but
// descend from a shim in the daemon's), minus skip.
func procsIn(all []proc, inos map[uint64]bool, skip map[int]bool) []proc {
	children := map[int][]proc{}
	for _, p := range all {
		children[p.PPID] = append(children[p.PPID], p)
	}
	seen := map[int]bool{}
	var out []proc
	var walk func(p proc)
	walk = func(p proc) {
		if seen[p.PID] || skip[p.PID] {
			return
		}
		seen[p.PID] = true
		out = append(out, p)
		for _, c := range children[p.PID] {
			walk(c)
		}
	}
	for _, p := range all {
		if inos[p.NetNS] {
			walk(p)
		}
	}
	return out
}

// memKiB returns a process's resident set (VmRSS) and proportional set (Pss, which
// splits shared pages between the processes that map them), in KiB.
func memKiB(pid int) (rss, pss int64) {
	rss = fieldKiB(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:")
	pss = fieldKiB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss:")
	return rss, pss
}

func fieldKiB(path, key string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, key); ok {
			v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v
		}
	}
	return 0
}

// usage is what the processes of one daemon's namespace cost at one moment.
type usage struct {
	Procs      int   // processes in the daemon's namespace (without the benchmark's helpers)
	Proxies    int   // of which docker-proxy
	RSS, PSS   int64 // KiB, summed over those processes
	ProxyRSS   int64 // KiB, docker-proxy only
	ProxyPSS   int64
	DaemonRSS  int64 // KiB, the daemon process itself
	containers int   // processes outside the namespace (containers' own), not counted above
}

// measureUsage sums the processes living in the network namespace ino, except
// skip (the benchmark's own helpers there, such as dnsmasq). Container processes
// (in their own namespaces) are not counted: they are the workload, not networking.
func measureUsage(ino uint64, daemonPID int, skip map[int]bool) (usage, error) {
	all, err := listProcs()
	if err != nil {
		return usage{}, err
	}
	var u usage
	for _, p := range procsIn(all, map[uint64]bool{ino: true}, skip) {
		if p.NetNS != ino {
			u.containers++
			continue
		}
		rss, pss := memKiB(p.PID)
		u.Procs++
		u.RSS += rss
		u.PSS += pss
		if p.PID == daemonPID {
			u.DaemonRSS = rss
		}
		if p.Comm == "docker-proxy" {
			u.Proxies++
			u.ProxyRSS += rss
			u.ProxyPSS += pss
		}
	}
	return u, nil
}

// netnsNames lists the names under /run/netns starting with prefix.
func netnsNames(prefix string) []string {
	matches, _ := filepath.Glob("/run/netns/" + prefix + "*")
	names := make([]string, 0, len(matches))
	for _, m := range matches {
		names = append(names, filepath.Base(m))
	}
	return names
}

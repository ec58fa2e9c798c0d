// Package netns owns Linux network namespaces and what lives inside them for pier:
// creating and pinning sandbox namespaces, configuring a sandbox's interfaces, addresses
// and routes, and sysctls. It knows nothing about networks, endpoints or drivers.
//
// All kernel access goes through handles bound to a namespace (netlink.NewHandleAt);
// the only code that switches a thread's namespace is Do, which locks the thread.
package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Namespace is an open network namespace with a netlink handle bound to it.
type Namespace struct {
	Path   string // pin path, or a /proc path for unpinned namespaces
	Handle vns.NsHandle
	NL     *netlink.Handle
}

// Open opens the namespace pinned or visible at path.
func Open(path string) (*Namespace, error) {
	h, err := vns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	return wrap(path, h)
}

// FromHandle wraps an already open namespace handle (it is duplicated, the caller keeps
// ownership of h).
func FromHandle(h vns.NsHandle) (*Namespace, error) {
	fd, err := unix.FcntlInt(uintptr(h), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicating namespace handle: %w", err)
	}
	return wrap("/proc/self/fd/"+strconv.Itoa(fd), vns.NsHandle(fd))
}

// Current opens the calling process's network namespace (the thread group leader's).
// Its Path names the process by PID, so other processes (pier exec) can enter it.
func Current() (*Namespace, error) { return Open(fmt.Sprintf("/proc/%d/ns/net", os.Getpid())) }

func wrap(path string, h vns.NsHandle) (*Namespace, error) {
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink handle in %s: %w", path, err)
	}
	return &Namespace{Path: path, Handle: h, NL: nl}, nil
}

// OpenHandle opens the namespace at path for Do only: NL is nil. It skips the netlink
// socket Open creates inside the namespace (two namespace switches, ~0.1 ms), for
// callers that only create sockets there.
func OpenHandle(path string) (*Namespace, error) {
	h, err := vns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	return &Namespace{Path: path, Handle: h}, nil
}

// Close releases the handles (the namespace itself lives on while pinned or in use).
func (n *Namespace) Close() error {
	if n == nil {
		return nil
	}
	if n.NL != nil {
		n.NL.Close()
	}
	return n.Handle.Close()
}

// Create makes a new network namespace pinned by a bind mount at path, with loopback up.
func Create(ctx context.Context, path string) (*Namespace, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating namespace directory: %w", err)
	}
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		return nil, fmt.Errorf("creating namespace pin file: %w", err)
	}
	h, err := newNamespace()
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	defer h.Close()
	if err := unix.Mount("/proc/self/fd/"+strconv.Itoa(int(h)), path, "", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("pinning namespace at %s: %w", path, err)
	}
	ns, err := Open(path)
	if err != nil {
		_ = Remove(path)
		return nil, err
	}
	if err := ns.linkUp("lo"); err != nil {
		ns.Close()
		_ = Remove(path)
		return nil, err
	}
	return ns, nil
}

// Remove unpins the namespace at path; it disappears once nothing else holds it.
// Removing a path that does not exist is not an error.
func Remove(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing namespace pin %s: %w", path, err)
	}
	return nil
}

// IsPinned reports whether path is a pinned network namespace (a bind mount of nsfs).
func IsPinned(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// newNamespace creates a namespace on a locked thread that is switched back afterwards;
// if switching back fails, the thread stays locked and the runtime discards it.
func newNamespace() (vns.NsHandle, error) {
	type result struct {
		h   vns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vns.Get()
		if err != nil {
			ch <- result{err: fmt.Errorf("getting current namespace: %w", err)}
			return
		}
		defer orig.Close()
		h, err := vns.New()
		if err != nil {
			ch <- result{err: fmt.Errorf("creating network namespace: %w", err)}
			return
		}
		if err := vns.Set(orig); err != nil {
			h.Close()
			ch <- result{err: fmt.Errorf("returning to original namespace: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{h: h}
	}()
	r := <-ch
	return r.h, r.err
}

// Do runs fn on the calling goroutine's OS thread, switched into the namespace, then
// switches back. If switching back fails, the thread stays locked to the goroutine and
// the runtime discards it when the goroutine ends.
func (n *Namespace) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := vns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := vns.Set(n.Handle); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering namespace %s: %w", n.Path, err)
	}
	ferr := fn()
	if err := vns.Set(orig); err != nil {
		return errors.Join(ferr, err) // the thread stays locked: discarded with the goroutine
	}
	runtime.UnlockOSThread()
	return ferr
}

// SetSysctl writes value to /proc/sys/<key> (key uses '/' separators) inside the namespace.
func (n *Namespace) SetSysctl(key, value string) error {
	return n.Do(func() error {
		p := filepath.Join("/proc/sys", key)
		cur, err := os.ReadFile(p)
		if err == nil && string(trimNL(cur)) == value {
			return nil
		}
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("setting sysctl %s=%s: %w", key, value, err)
		}
		return nil
	})
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

func (n *Namespace) linkUp(name string) error {
	l, err := n.NL.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", name, n.Path, err)
	}
	if err := n.NL.LinkSetUp(l); err != nil {
		return fmt.Errorf("setting %s up in %s: %w", name, n.Path, err)
	}
	return nil
}

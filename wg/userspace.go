package wg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/piernet/pier/netns"
)

// userspace is wireguard-go embedded in this process: a TUN device created in the
// tunnel namespace, UDP sockets opened in the socket namespace, configured through
// IpcSet (no UAPI socket on disk, no wireguard-go binary).
type userspace struct{ dev *device.Device }

func openUserspace(ctx context.Context, o Options, tunNS, sockNS *netns.Namespace, log *slog.Logger) (backend, error) {
	var td tun.Device
	err := tunNS.Do(func() error {
		var err error
		td, err = tun.CreateTUN(o.Name, o.MTU)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("creating tun device %s in %s: %w", o.Name, tunNS.Path, err)
	}
	bind := &nsBind{Bind: conn.NewStdNetBind(), ns: sockNS}
	dev := device.NewDevice(&nsTUN{Device: td, ns: tunNS}, bind, wgLogger(log))
	return &userspace{dev: dev}, nil
}

func (u *userspace) apply(c change) error {
	if err := u.dev.IpcSet(uapiText(c)); err != nil {
		return err
	}
	return u.dev.Up() // a no-op once up; opens the bind on the first call
}

func (u *userspace) status() ([]PeerStatus, error) {
	s, err := u.dev.IpcGet()
	if err != nil {
		return nil, err
	}
	return parseUAPI(s)
}

// close stops the device and closes the TUN file: the kernel removes the interface,
// and its routes with it.
func (u *userspace) close() error {
	u.dev.Close()
	return nil
}

// nsBind opens wireguard-go's UDP sockets inside the socket namespace (on a locked
// thread); once open, a socket stays in the namespace it was made in.
type nsBind struct {
	conn.Bind
	ns *netns.Namespace
}

func (b *nsBind) Open(port uint16) (fns []conn.ReceiveFunc, actual uint16, err error) {
	err = b.ns.Do(func() error {
		var oerr error
		fns, actual, oerr = b.Bind.Open(port)
		return oerr
	})
	return fns, actual, err
}

// nsTUN asks the interface's MTU inside the tunnel namespace: wireguard-go reads it
// by name with an ioctl on a fresh socket, from whatever thread its event goroutine
// runs on. That goroutine outlives Device.Close, so after Close it gets the last MTU
// seen and the namespace (closed by then) is not touched.
type nsTUN struct {
	tun.Device
	ns *netns.Namespace

	mu     sync.Mutex // guards the fields below
	closed bool
	mtu    int
}

func (t *nsTUN) MTU() (mtu int, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return t.mtu, nil
	}
	derr := t.ns.Do(func() error {
		mtu, err = t.Device.MTU()
		return nil
	})
	if err = errors.Join(derr, err); err == nil {
		t.mtu = mtu
	}
	return mtu, err
}

func (t *nsTUN) Close() error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	return t.Device.Close()
}

// wgLogger sends wireguard-go's log lines to log: its verbose lines at debug, its
// errors (mostly failed sends: a peer unreachable) at warning.
func wgLogger(log *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: func(f string, a ...any) { log.Debug(strings.TrimSpace(fmt.Sprintf(f, a...))) },
		Errorf:   func(f string, a ...any) { log.Warn(strings.TrimSpace(fmt.Sprintf(f, a...))) },
	}
}

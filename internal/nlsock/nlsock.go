// Package nlsock holds small helpers for netlink sockets shared by the packages that
// program nftables (firewall, lb).
package nlsock

import (
	"errors"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// SetBuffer sets a socket buffer size (SO_SNDBUF/SO_RCVBUF as plain, their FORCE
// variants as force), beyond the sysctl limit if the process may (CAP_NET_ADMIN).
func SetBuffer(c *netlink.Conn, force, plain, size int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, force, size); serr != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, plain, size)
		}
	})
	return errors.Join(err, serr)
}

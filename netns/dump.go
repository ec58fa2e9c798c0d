package netns

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// Dump runs a netlink dump (LinkList, RouteList…) and runs it again when the kernel
// says it was interrupted: the table changed while it was read, which happens when
// anything else on the machine adds or deletes links or routes (a namespace torn down
// by the kernel, another daemon), and leaves the result possibly incomplete. After a
// few interrupted tries it returns the last error.
func Dump[T any](fn func() (T, error)) (T, error) {
	var v T
	var err error
	for range 5 {
		if v, err = fn(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

package netns

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestDumpRetriesInterruptedDumps(t *testing.T) {
	calls := 0
	got, err := Dump(func() (int, error) {
		calls++
		if calls < 3 {
			return -1, netlink.ErrDumpInterrupted
		}
		return 42, nil
	})
	if got != 42 || err != nil || calls != 3 {
		t.Errorf("Dump = %d, %v after %d calls; want 42, nil after 3", got, err, calls)
	}
	calls = 0
	if _, err := Dump(func() (int, error) { calls++; return 0, netlink.ErrDumpInterrupted }); !errors.Is(err, netlink.ErrDumpInterrupted) || calls != 5 {
		t.Errorf("always interrupted: %v after %d calls; want the error after 5", err, calls)
	}
	calls = 0
	other := errors.New("boom")
	if _, err := Dump(func() (int, error) { calls++; return 0, other }); err != other || calls != 1 {
		t.Errorf("other error: %v after %d calls; want it at once", err, calls)
	}
}

package undo

import (
	"errors"
	"strings"
	"testing"

	"github.com/piernet/pier/errdefs"
)

func TestRollbackRunsInReverseAndJoinsErrors(t *testing.T) {
	var order []int
	var s Stack
	s.Push(func() error { order = append(order, 1); return nil })
	s.Push(func() error { order = append(order, 2); return errors.New("two failed") })
	s.Push(func() error { order = append(order, 3); return nil })
	err := s.Rollback(errors.New("step 4 failed"))
	if got := order; len(got) != 3 || got[0] != 3 || got[2] != 1 {
		t.Fatalf("undo order = %v, want [3 2 1]", got)
	}
	if !strings.Contains(err.Error(), "step 4 failed") || !strings.Contains(err.Error(), "two failed") {
		t.Fatalf("error = %q, want cause and undo failure", err)
	}
	if s.Undo() != nil || len(order) != 3 {
		t.Fatal("stack not emptied after rollback")
	}
}

func TestReleaseForgets(t *testing.T) {
	var s Stack
	ran := false
	s.Push(func() error { ran = true; return nil })
	s.Release()
	if err := s.Undo(); err != nil || ran {
		t.Fatal("released undo ran")
	}
}

type pathError struct{ path string }

func (e *pathError) Error() string { return "bad path " + e.path }

func TestRollbackKeepsKinds(t *testing.T) {
	errGone := errors.New("gone")
	var s Stack
	s.Push(func() error { return errdefs.NotFound("endpoint: %w", errGone) })
	s.Push(func() error { return &pathError{"/run/x"} })
	err := s.Rollback(errdefs.Conflict("port 80 is taken"))

	if !errdefs.Is(err, errdefs.KindConflict) {
		t.Errorf("kind = %v, want the cause's (conflict)", errdefs.KindOf(err))
	}
	var pe *pathError
	if !errors.Is(err, errGone) || !errors.As(err, &pe) || pe.path != "/run/x" {
		t.Errorf("undo errors lost their identity in %q", err)
	}
	parts := err.(interface{ Unwrap() []error }).Unwrap()
	if len(parts) != 2 || !strings.HasPrefix(parts[1].Error(), "rollback: ") {
		t.Fatalf("want cause and a rollback: part, got %q", parts)
	}
	if !errdefs.Is(parts[1], errdefs.KindNotFound) {
		t.Errorf("rollback part kind = %v, want the undo error's (not found)", errdefs.KindOf(parts[1]))
	}
	want := "port 80 is taken\nrollback: bad path /run/x\nendpoint: gone"
	if err.Error() != want {
		t.Errorf("message = %q, want %q", err, want)
	}
}

func TestRollbackOfUnclassifiedCause(t *testing.T) {
	cause := errors.New("netlink: device busy")
	var s Stack
	s.Push(func() error { return errdefs.NotFound("no such plugin") })
	err := s.Rollback(cause)
	if !errors.Is(err, cause) || !errdefs.Is(err, errdefs.KindInternal) {
		t.Errorf("kind = %v, want internal (the cause has none; the undo's not found must not stand in)", errdefs.KindOf(err))
	}
	var clean Stack
	if got := clean.Rollback(cause); got != cause {
		t.Errorf("rollback with nothing failing = %v, want the cause itself", got)
	}
}

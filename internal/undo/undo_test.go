package undo

import (
	"errors"
	"strings"
	"testing"
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

// Package undo is the undo stack used by multi-step setup: push an undo after each
// successful step; on failure run them in reverse and join their errors.
package undo

import (
	"errors"
	"fmt"

	"github.com/piernet/pier/errdefs"
)

// Stack holds undo functions. The zero value is ready to use.
type Stack struct{ fns []func() error }

// Push records fn to run on Undo.
func (s *Stack) Push(fn func() error) { s.fns = append(s.fns, fn) }

// Undo runs the recorded functions in reverse order, returning their joined errors,
// and empties the stack.
func (s *Stack) Undo() error {
	var errs []error
	for i := len(s.fns) - 1; i >= 0; i-- {
		if err := s.fns[i](); err != nil {
			errs = append(errs, err)
		}
	}
	s.fns = nil
	return errors.Join(errs...)
}

// Rollback runs Undo and joins its error after cause; use as `return u.Rollback(err)`.
// The undo errors come wrapped as "rollback: …" and keep their identity: errors.Is
// and errors.As find them as well as the cause. The result's kind (errdefs.KindOf)
// is the cause's: a cause of no kind is marked Internal when the rollback failed, so
// that an undo error's kind cannot stand in for it.
func (s *Stack) Rollback(cause error) error {
	err := s.Undo()
	if err == nil {
		return cause
	}
	if errdefs.KindOf(cause) == errdefs.KindUnknown {
		cause = errdefs.Wrap(errdefs.KindInternal, cause)
	}
	return errors.Join(cause, fmt.Errorf("rollback: %w", err))
}

// Release forgets the recorded functions (the operation succeeded).
func (s *Stack) Release() { s.fns = nil }

// Package undo is the undo stack used by multi-step setup: push an undo after each
// successful step; on failure run them in reverse and join their errors.
package undo

import "errors"

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
func (s *Stack) Rollback(cause error) error {
	if err := s.Undo(); err != nil {
		return errors.Join(cause, errors.New("rollback: "+err.Error()))
	}
	return cause
}

// Release forgets the recorded functions (the operation succeeded).
func (s *Stack) Release() { s.fns = nil }

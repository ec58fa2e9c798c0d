// Package errdefs defines the small set of error kinds pier uses across packages.
// It owns classification only: the mapping of kinds to HTTP status lives in the API
// package, in exactly one function. It must not import any other pier package.
package errdefs

import (
	"errors"
	"fmt"
)

// Kind classifies an error for callers that must react to it (HTTP status, CLI exit).
type Kind int

const (
	KindUnknown Kind = iota
	KindNotFound
	KindInvalidArgument
	KindConflict
	KindForbidden
	KindUnavailable
	KindNotImplemented
	KindInternal
)

func (k Kind) String() string {
	switch k {
	case KindNotFound:
		return "not found"
	case KindInvalidArgument:
		return "invalid argument"
	case KindConflict:
		return "conflict"
	case KindForbidden:
		return "forbidden"
	case KindUnavailable:
		return "unavailable"
	case KindNotImplemented:
		return "not implemented"
	case KindInternal:
		return "internal"
	}
	return "unknown"
}

type kindError struct {
	kind Kind
	err  error
}

func (e *kindError) Error() string { return e.err.Error() }
func (e *kindError) Unwrap() error { return e.err }

// New returns an error of kind k with a formatted message (fmt.Errorf semantics, %w allowed).
func New(k Kind, format string, args ...any) error {
	return &kindError{kind: k, err: fmt.Errorf(format, args...)}
}

// Wrap marks err with kind k, keeping its message. Wrap(k, nil) is nil.
func Wrap(k Kind, err error) error {
	if err == nil {
		return nil
	}
	return &kindError{kind: k, err: err}
}

// KindOf returns the outermost kind found in err's chain, or KindUnknown.
func KindOf(err error) Kind {
	var ke *kindError
	if errors.As(err, &ke) {
		return ke.kind
	}
	return KindUnknown
}

// Is reports whether err is of kind k.
func Is(err error, k Kind) bool { return KindOf(err) == k }

func NotFound(format string, args ...any) error { return New(KindNotFound, format, args...) }
func InvalidArgument(format string, args ...any) error {
	return New(KindInvalidArgument, format, args...)
}
func Conflict(format string, args ...any) error  { return New(KindConflict, format, args...) }
func Forbidden(format string, args ...any) error { return New(KindForbidden, format, args...) }
func Unavailable(format string, args ...any) error {
	return New(KindUnavailable, format, args...)
}
func NotImplemented(format string, args ...any) error {
	return New(KindNotImplemented, format, args...)
}
func Internal(format string, args ...any) error { return New(KindInternal, format, args...) }

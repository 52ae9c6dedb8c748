// Package api holds the wire types and error codes shared by Flynn's servers
// and its Go clients. It depends on the standard library only.
package api

import (
	"errors"
	"fmt"
)

// ErrorCode is the machine-readable kind of an API error. It travels in the
// "code" field of every JSON error body.
type ErrorCode string

// The error codes every Flynn server uses.
const (
	CodeValidation   ErrorCode = "validation_error"
	CodeNotFound     ErrorCode = "not_found"
	CodeObjectExists ErrorCode = "object_exists"
	CodeUnauthorized ErrorCode = "unauthorized"
	// CodeForbidden: the caller is known, but what it asks is not allowed
	// to anyone holding its credential (e.g. deleting a system app).
	CodeForbidden        ErrorCode = "forbidden"
	CodeConflict         ErrorCode = "conflict"
	CodeMethodNotAllowed ErrorCode = "method_not_allowed"
	CodeTooLarge         ErrorCode = "request_too_large"
	CodeUnavailable      ErrorCode = "service_unavailable"
	CodeUnknown          ErrorCode = "unknown_error"
)

// Sentinel errors, one per code. A client maps an error body back to the
// matching sentinel so that errors.Is(err, api.ErrNotFound) works across HTTP.
var (
	ErrValidation       = &Error{Code: CodeValidation, Message: "validation error"}
	ErrNotFound         = &Error{Code: CodeNotFound, Message: "not found"}
	ErrObjectExists     = &Error{Code: CodeObjectExists, Message: "object exists"}
	ErrUnauthorized     = &Error{Code: CodeUnauthorized, Message: "unauthorized"}
	ErrForbidden        = &Error{Code: CodeForbidden, Message: "forbidden"}
	ErrConflict         = &Error{Code: CodeConflict, Message: "conflict"}
	ErrMethodNotAllowed = &Error{Code: CodeMethodNotAllowed, Message: "method not allowed"}
	ErrTooLarge         = &Error{Code: CodeTooLarge, Message: "request too large"}
	ErrUnavailable      = &Error{Code: CodeUnavailable, Message: "service unavailable"}
	ErrUnknown          = &Error{Code: CodeUnknown, Message: "unknown error"}
)

// Error is the JSON error body: {"code","message","field"}.
type Error struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
	// Field names the request field that was invalid, when there is one.
	Field string `json:"field,omitempty"`
	// Status is the HTTP status the error was or will be sent with. It is
	// not part of the JSON body.
	Status int `json:"-"`
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s: %s (field %s)", e.Code, e.Message, e.Field)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Is reports whether target is an *Error with the same code, so a decoded
// error matches the package's sentinels.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// HTTPStatus is the status code that goes with the error's code.
func (e *Error) HTTPStatus() int {
	if e.Status != 0 {
		return e.Status
	}
	return StatusFor(e.Code)
}

// The HTTP statuses of the error codes, as net/http names them: this
// package does not import net/http, so that programs that only need its
// types (the job supervisor) do not link an HTTP stack.
const (
	statusBadRequest            = 400
	statusUnauthorized          = 401
	statusForbidden             = 403
	statusNotFound              = 404
	statusMethodNotAllowed      = 405
	statusConflict              = 409
	statusRequestEntityTooLarge = 413
	statusUnprocessableEntity   = 422
	statusInternalServerError   = 500
	statusBadGateway            = 502
	statusServiceUnavailable    = 503
	statusGatewayTimeout        = 504
)

// StatusFor maps an error code to its HTTP status.
func StatusFor(c ErrorCode) int {
	switch c {
	case CodeValidation:
		return statusBadRequest
	case CodeNotFound:
		return statusNotFound
	case CodeObjectExists, CodeConflict:
		return statusConflict
	case CodeUnauthorized:
		return statusUnauthorized
	case CodeForbidden:
		return statusForbidden
	case CodeMethodNotAllowed:
		return statusMethodNotAllowed
	case CodeTooLarge:
		return statusRequestEntityTooLarge
	case CodeUnavailable:
		return statusServiceUnavailable
	default:
		return statusInternalServerError
	}
}

// CodeForStatus guesses an error code from an HTTP status, for replies that
// carry no JSON error body.
func CodeForStatus(status int) ErrorCode {
	switch status {
	case statusBadRequest, statusUnprocessableEntity:
		return CodeValidation
	case statusNotFound:
		return CodeNotFound
	case statusConflict:
		return CodeConflict
	case statusUnauthorized:
		return CodeUnauthorized
	case statusForbidden:
		return CodeForbidden
	case statusMethodNotAllowed:
		return CodeMethodNotAllowed
	case statusRequestEntityTooLarge:
		return CodeTooLarge
	case statusServiceUnavailable, statusBadGateway, statusGatewayTimeout:
		return CodeUnavailable
	default:
		return CodeUnknown
	}
}

// Validation returns a validation error naming the offending field.
func Validation(field, format string, args ...any) *Error {
	return &Error{Code: CodeValidation, Field: field, Message: fmt.Sprintf(format, args...)}
}

// NotFound returns a not-found error with the given message.
func NotFound(format string, args ...any) *Error {
	return &Error{Code: CodeNotFound, Message: fmt.Sprintf(format, args...)}
}

// Conflict returns a conflict error with the given message.
func Conflict(format string, args ...any) *Error {
	return &Error{Code: CodeConflict, Message: fmt.Sprintf(format, args...)}
}

// Exists returns an object-exists error with the given message.
func Exists(format string, args ...any) *Error {
	return &Error{Code: CodeObjectExists, Message: fmt.Sprintf(format, args...)}
}

// Forbidden returns a forbidden error with the given message.
func Forbidden(format string, args ...any) *Error {
	return &Error{Code: CodeForbidden, Message: fmt.Sprintf(format, args...)}
}

// Unauthorized returns an unauthorized error with the given message.
func Unauthorized(format string, args ...any) *Error {
	return &Error{Code: CodeUnauthorized, Message: fmt.Sprintf(format, args...)}
}

// AsError returns err as an *Error when it is (or wraps) one.
func AsError(err error) (*Error, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e, true
	}
	return nil, false
}

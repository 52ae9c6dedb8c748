// Package httpapi is the HTTP plumbing every Flynn server shares: handlers
// that return errors, one adapter that maps those errors to a status code
// and the JSON body {"code","message","field"}, JSON decoding with limits,
// Basic-auth with several keys, an access log, panic recovery, Server-Sent
// Events, and a graceful Serve whose Limits cut off clients that stall
// (headers, bodies, replies they do not read) or send too much.
package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"

	"github.com/flynnrebuilt/flynn/api"
)

// HandlerFunc is an HTTP handler that returns an error instead of writing
// one. A nil error means the handler wrote its reply.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// ServeHTTP calls h and, when it fails, writes the error as JSON.
func (h HandlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := h(w, r); err != nil {
		WriteError(w, r, err)
	}
}

// MaxBodyBytes is the default limit on a JSON request body.
const MaxBodyBytes = 4 << 20

// WriteJSON writes v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if v == nil {
		return nil
	}
	enc := json.NewEncoder(w)
	return enc.Encode(v)
}

// WriteError writes err as a JSON error body. Errors that are not an
// *api.Error become a 500 with code unknown_error and a generic message, so
// internal details do not leak; they are logged by the access log instead.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	e, ok := api.AsError(err)
	if !ok {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			e = &api.Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("request body exceeds %d bytes", mbe.Limit)}
		} else {
			setLoggedError(r, err)
			e = &api.Error{Code: api.CodeUnknown, Message: "internal error"}
		}
	}
	status := e.HTTPStatus()
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="flynn"`)
	}
	WriteJSON(w, status, e)
}

// DecodeJSON decodes the request body into v. It refuses bodies over
// MaxBodyBytes, malformed JSON, wrong field types and trailing data, each
// with a validation error a client can act on.
func DecodeJSON(r *http.Request, v any) error {
	return decodeJSON(r.Body, v, false)
}

// DecodeJSONStrict is DecodeJSON that also refuses unknown fields.
func DecodeJSONStrict(r *http.Request, v any) error {
	return decodeJSON(r.Body, v, true)
}

func decodeJSON(body io.Reader, v any, strict bool) error {
	if body == nil {
		return api.Validation("", "request body is empty")
	}
	lr := &io.LimitedReader{R: body, N: MaxBodyBytes + 1}
	dec := json.NewDecoder(lr)
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &api.Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("request body exceeds %d bytes", mbe.Limit)}
		}
		if _, ok := api.AsError(err); ok {
			return err // e.g. the body stalled
		}
		if lr.N <= 0 {
			return &api.Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("request body exceeds %d bytes", MaxBodyBytes)}
		}
		return jsonError(err)
	}
	if dec.More() {
		return api.Validation("", "request body has data after the JSON value")
	}
	if _, err := dec.Token(); err != io.EOF {
		return api.Validation("", "request body has data after the JSON value")
	}
	return nil
}

func jsonError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return api.Validation("", "request body is empty")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return api.Validation("", "request body is truncated JSON")
	case errors.As(err, &syn):
		return api.Validation("", "malformed JSON at byte %d: %v", syn.Offset, syn)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return api.Validation("", "the request body must be %s, not %s", jsonKind(typ.Type), typ.Value)
		}
		return api.Validation(typ.Field, "field %q must be %s, not %s", typ.Field, jsonKind(typ.Type), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return api.Validation(field, "unknown field %q", field)
	default:
		return api.Validation("", "invalid JSON: %v", err)
	}
}

// jsonKind names the JSON value that decodes into t, as an error message
// should to the client (not Go's name for the type).
func jsonKind(t reflect.Type) string {
	if t == nil {
		return "another JSON value"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Map:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	}
	return "another JSON value"
}

// Recover turns a panic in next into a 500 JSON error and logs the panic.
func Recover(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				log.Error("handler panic", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v))
				WriteJSON(w, http.StatusInternalServerError, &api.Error{Code: api.CodeUnknown, Message: "internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

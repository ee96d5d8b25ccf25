package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/regcache/regcache/internal/pull"
	"github.com/regcache/regcache/internal/upstream"
)

// Error is an OCI distribution error response.
type Error struct {
	Status     int
	Code       string
	Message    string
	RetryAfter int // seconds, for 429 and 503
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errNotFound(msg string) *Error {
	return &Error{Status: http.StatusNotFound, Code: "NOT_FOUND", Message: msg}
}

func errUnsupported(msg string) *Error {
	return &Error{Status: http.StatusMethodNotAllowed, Code: "UNSUPPORTED", Message: msg}
}

func errRegistryUnknown(host string) *Error {
	return &Error{Status: http.StatusNotFound, Code: "NAME_UNKNOWN",
		Message: fmt.Sprintf("registry %s is not configured in regcache; add it under registries: to cache it", quote(host))}
}

// writeError is the one place errors become OCI error JSON.
func writeError(w http.ResponseWriter, e *Error) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	h.Del("Docker-Content-Digest")
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	w.WriteHeader(e.Status)
	body := struct {
		Errors []map[string]string `json:"errors"`
	}{Errors: []map[string]string{{"code": e.Code, "message": e.Message}}}
	_ = json.NewEncoder(w).Encode(body)
}

// toError maps what the cache returned to the response the client gets. A
// client that cannot be served must learn which upstream failed and what to
// do about it, never the credentials involved (upstream.Error carries none).
func toError(err error, kind Kind) *Error {
	var se *Error
	if errors.As(err, &se) {
		return se
	}
	var pe *pull.Error
	if errors.As(err, &pe) {
		return &Error{Status: pe.Status, Code: pe.Code, Message: pe.Message}
	}
	if errors.Is(err, pull.ErrUnknownRegistry) {
		return &Error{Status: http.StatusNotFound, Code: "NAME_UNKNOWN", Message: err.Error()}
	}
	var ue *upstream.Error
	if errors.As(err, &ue) {
		return upstreamError(ue, kind)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &Error{Status: http.StatusServiceUnavailable, Code: "UNAVAILABLE", Message: "request cancelled or timed out"}
	}
	return &Error{Status: http.StatusInternalServerError, Code: "UNKNOWN", Message: "internal error: " + err.Error()}
}

func upstreamError(ue *upstream.Error, kind Kind) *Error {
	retry := int((ue.RetryAfter + 999_999_999) / 1_000_000_000)
	switch {
	case upstream.IsNotFound(ue):
		code := ue.Code
		if code == "" {
			code = map[Kind]string{KindManifest: "MANIFEST_UNKNOWN", KindBlob: "BLOB_UNKNOWN"}[kind]
			if code == "" {
				code = "NAME_UNKNOWN"
			}
		}
		return &Error{Status: http.StatusNotFound, Code: code, Message: ue.Error()}
	case upstream.IsRateLimited(ue):
		if retry <= 0 {
			// The upstream gave no hint; a minute is a polite default
			// that CI retry loops understand.
			retry = 60
		}
		return &Error{Status: http.StatusTooManyRequests, Code: "TOOMANYREQUESTS", RetryAfter: retry,
			Message: fmt.Sprintf("upstream %s is rate limiting regcache and this content is not cached yet; "+
				"configure credentials under registries.%s.auth (an authenticated account has a higher limit) or add a mirror under registries.%s.mirrors (%s)",
				ue.Registry, ue.Registry, ue.Registry, ue.Error())}
	case ue.Code == upstream.CodeDigestInvalid:
		return &Error{Status: http.StatusBadGateway, Code: "DIGEST_INVALID", Message: ue.Error()}
	case ue.StatusCode == http.StatusUnauthorized || ue.StatusCode == http.StatusForbidden:
		return &Error{Status: http.StatusForbidden, Code: "DENIED",
			Message: fmt.Sprintf("upstream %s refused regcache's credentials for this repository; check registries.%s.auth (%s)", ue.Registry, ue.Registry, ue.Error())}
	case ue.StatusCode >= 400 && ue.StatusCode < 500:
		code := ue.Code
		if code == "" {
			code = "UNKNOWN"
		}
		return &Error{Status: ue.StatusCode, Code: code, Message: ue.Error()}
	default:
		return &Error{Status: http.StatusServiceUnavailable, Code: "UNAVAILABLE", RetryAfter: retry,
			Message: fmt.Sprintf("upstream %s is unavailable and this content is not cached: %s", ue.Registry, ue.Error())}
	}
}

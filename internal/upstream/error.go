package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// OCI distribution error codes used by this package. Registries send more;
// Error.Code carries whatever they sent.
const (
	CodeBlobUnknown     = "BLOB_UNKNOWN"
	CodeManifestUnknown = "MANIFEST_UNKNOWN"
	CodeNameUnknown     = "NAME_UNKNOWN"
	CodeNameInvalid     = "NAME_INVALID"
	CodeTagInvalid      = "TAG_INVALID"
	CodeDigestInvalid   = "DIGEST_INVALID"
	CodeManifestInvalid = "MANIFEST_INVALID"
	CodeUnauthorized    = "UNAUTHORIZED"
	CodeDenied          = "DENIED"
	CodeUnsupported     = "UNSUPPORTED"
	CodeTooManyRequests = "TOOMANYREQUESTS"
	CodeUnavailable     = "UNAVAILABLE"
)

// maxErrorBody bounds how much of an error response is read: enough for any
// OCI error document, small enough that a hostile upstream cannot make us
// buffer a blob.
const maxErrorBody = 64 << 10

// maxMessage bounds Error.Message so a chatty upstream cannot flood logs.
const maxMessage = 512

// Error is what every failed upstream call returns. Use errors.As to get it.
//
// Its text names the registry, the operation and the repository, never
// credentials, tokens or Authorization values: the transports never put those
// in URLs, and response headers are not copied into it.
type Error struct {
	Registry   string        // Config.Name of the registry (or the mirror's URL)
	Op         string        // "HEAD manifest", "GET blob", ...
	Repository string        // repository as asked, when there is one
	Reference  string        // tag or digest, when there is one
	StatusCode int           // 0 when the upstream could not be reached or timed out
	Code       string        // OCI error code: TOOMANYREQUESTS, MANIFEST_UNKNOWN, ...
	Message    string        // the upstream's message, shortened
	RetryAfter time.Duration // from Retry-After on 429/503
	Err        error         // underlying network or auth error, if any

	// notSent marks refusals made here (circuit open, Retry-After pending)
	// so they do not count as the source failing again.
	notSent bool
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("upstream ")
	b.WriteString(e.Registry)
	b.WriteString(": ")
	b.WriteString(e.Op)
	if e.Repository != "" {
		b.WriteString(" ")
		b.WriteString(e.Repository)
		if e.Reference != "" {
			if strings.Contains(e.Reference, ":") {
				b.WriteString("@")
			} else {
				b.WriteString(":")
			}
			b.WriteString(e.Reference)
		}
	}
	var detail []string
	if e.StatusCode != 0 {
		detail = append(detail, fmt.Sprintf("status %d", e.StatusCode))
	}
	if e.Code != "" {
		detail = append(detail, e.Code)
	}
	if len(detail) > 0 {
		b.WriteString(": ")
		b.WriteString(strings.Join(detail, " "))
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	if e.RetryAfter > 0 {
		fmt.Fprintf(&b, " (retry after %s)", e.RetryAfter)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// IsNotFound reports whether the upstream said the manifest, blob or
// repository does not exist (404, MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN).
func IsNotFound(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	if e.StatusCode == http.StatusNotFound {
		return true
	}
	switch e.Code {
	case CodeManifestUnknown, CodeBlobUnknown, CodeNameUnknown:
		return true
	}
	return false
}

// IsRateLimited reports whether the upstream answered 429 (or sent
// TOOMANYREQUESTS in the body of another status).
func IsRateLimited(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return e.StatusCode == http.StatusTooManyRequests || e.Code == CodeTooManyRequests
}

// IsUnavailable reports whether the failure says nothing about the content,
// only about the upstream's health: unreachable, timed out, 5xx or rate
// limited. It is the caller's cue to serve stale content if it has any.
// A caller that cancelled its own context is not an unavailable upstream.
func IsUnavailable(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	switch {
	case IsRateLimited(err):
		return true
	case e.StatusCode >= 500, e.StatusCode == http.StatusRequestTimeout:
		return true
	case e.Code == CodeUnavailable:
		return true
	case e.StatusCode == 0 && e.Err != nil:
		return !errors.Is(e.Err, context.Canceled)
	}
	return false
}

// ociErrors is the body of an OCI distribution error response. Docker Hub's
// token server answers {"details": "..."} instead, so that is read too.
type ociErrors struct {
	Errors []struct {
		Code    string          `json:"code"`
		Message string          `json:"message"`
		Detail  json.RawMessage `json:"detail"`
	} `json:"errors"`
	Details string `json:"details"`
}

// responseError turns a non-2xx response into an *Error and closes its body.
// notFoundCode is the code to report for a bare 404, which HEAD responses
// always are.
func responseError(resp *http.Response, base Error, notFoundCode string) *Error {
	defer resp.Body.Close()
	e := base
	e.StatusCode = resp.StatusCode
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		e.RetryAfter, _ = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var doc ociErrors
	if json.Unmarshal(body, &doc) == nil {
		if len(doc.Errors) > 0 {
			e.Code = doc.Errors[0].Code
			e.Message = doc.Errors[0].Message
		} else if doc.Details != "" {
			e.Message = doc.Details
		}
	} else if len(body) > 0 && utf8.Valid(body) && isPlainText(resp.Header.Get("Content-Type")) {
		// Only plain text: an object store's XML error (a CDN after a
		// redirect) can echo the request's signature.
		e.Message = strings.TrimSpace(string(body))
	}
	if e.Code == "" {
		e.Code = statusCode(resp.StatusCode, notFoundCode)
	}
	e.Message = shorten(e.Message)
	return &e
}

// statusCode is the OCI code implied by a bare status, so callers can switch
// on Code even when the body was empty (HEAD) or not JSON (a proxy's 502).
func statusCode(status int, notFoundCode string) string {
	switch {
	case status == http.StatusUnauthorized:
		return CodeUnauthorized
	case status == http.StatusForbidden:
		return CodeDenied
	case status == http.StatusNotFound:
		return notFoundCode
	case status == http.StatusTooManyRequests:
		return CodeTooManyRequests
	case status >= 500:
		return CodeUnavailable
	}
	return ""
}

// wrapError turns an error from the transport stack into an *Error. Errors
// from go-containerregistry's ping and token exchange carry the auth server's
// status; anything else is a network failure (StatusCode 0).
func wrapError(err error, base Error) *Error {
	var ue *Error
	if errors.As(err, &ue) {
		return ue
	}
	e := base
	var te *transport.Error
	if errors.As(err, &te) {
		// Copy the facts, not the *transport.Error: it holds the token
		// request, whose headers carry the Basic credentials.
		e.StatusCode = te.StatusCode
		if len(te.Errors) > 0 {
			e.Code = string(te.Errors[0].Code)
			e.Message = "auth: " + te.Errors[0].Message
		} else {
			e.Message = "auth: token or ping request failed"
		}
		if e.Code == "" {
			e.Code = statusCode(te.StatusCode, "")
		}
		e.Message = shorten(e.Message)
		return &e
	}
	e.Err = redactURLError(err)
	return &e
}

// redactURLError strips the query and user info from the URL that net/http
// puts in its errors. After a redirect that URL is the CDN's, and CDN URLs
// carry short-lived signatures in their query (?verify=..., X-Amz-Signature).
func redactURLError(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	return &url.Error{Op: ue.Op, URL: redactURL(ue.URL), Err: ue.Err}
}

func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparsable URL>"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "REDACTED"
	}
	u.Fragment = ""
	return u.String()
}

func isPlainText(ct string) bool {
	if ct == "" {
		return true
	}
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "text/plain"
}

// parseRetryAfter reads Retry-After as delta-seconds or an HTTP-date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		// Cap absurd values (and avoid overflow); a day is longer than
		// any window Docker Hub uses.
		if secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		return time.Duration(secs) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 {
			d = 0
		}
		return min(d, maxRetryAfter), true
	}
	return 0, false
}

const maxRetryAfter = 24 * time.Hour

func shorten(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	s = s[:maxMessage]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}

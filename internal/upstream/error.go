package upstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/regcache/regcache/internal/regerr"
)

// OCI distribution error codes this package reads from upstream answers.
const (
	codeBlobUnknown     = "BLOB_UNKNOWN"
	codeManifestUnknown = "MANIFEST_UNKNOWN"
	codeNameUnknown     = "NAME_UNKNOWN"
	codeTooManyRequests = "TOOMANYREQUESTS"
)

// maxErrorBody bounds how much of an error response is read: enough for any
// OCI error document, small enough that a hostile upstream cannot make us
// buffer a blob.
const maxErrorBody = 64 << 10

// maxDetail bounds Error.Detail so a chatty upstream cannot flood logs.
const maxDetail = 512

// errNotSent is the cause of refusals made here (circuit open, Retry-After
// pending, no mirror carries the repository): nothing was asked, so the
// source is not judged again.
var errNotSent = errors.New("not sent")

func isNotSent(err error) bool { return errors.Is(err, errNotSent) }

// call names one operation for its errors.
type call struct {
	registry string // the registry, or the mirror asked
	op       string // "HEAD manifest", "GET blob", ...
	repo     string // the repository as that source names it
	ref      string
}

func (c call) err(k regerr.Kind, msg string) *regerr.Error {
	return &regerr.Error{Kind: k, Registry: c.registry, Op: c.op, Repo: c.repo, Ref: c.ref, Message: msg}
}

func (c call) notSent(k regerr.Kind, msg string, retry time.Duration) *regerr.Error {
	e := c.err(k, msg)
	e.RetryAfter = retry
	e.Err = errNotSent
	return e
}

// ociErrors is the body of an OCI distribution error response. Docker Hub's
// token server answers {"details": "..."} instead, so that is read too.
type ociErrors struct {
	Errors []struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
	Details string `json:"details"`
}

// responseError classifies a non-2xx response and closes its body.
func (c call) responseError(resp *http.Response, red redactor) *regerr.Error {
	defer resp.Body.Close()
	e := c.err(kindOfStatus(resp.StatusCode), "")
	e.Status = resp.StatusCode
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		e.RetryAfter, _ = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var doc ociErrors
	if json.Unmarshal(body, &doc) == nil {
		if len(doc.Errors) > 0 {
			e.Code = errorCode(doc.Errors[0].Code)
			e.Detail = doc.Errors[0].Message
		} else {
			e.Detail = doc.Details
		}
	} else if utf8.Valid(body) && isPlainText(resp.Header.Get("Content-Type")) {
		// Only plain text: an object store's XML error (a CDN after a
		// redirect) can echo the request's signature.
		e.Detail = strings.TrimSpace(string(body))
	}
	e.Detail = red.forRequest(resp.Request).text(e.Detail)
	switch e.Code {
	case codeTooManyRequests:
		e.Kind = regerr.RateLimited
	case codeManifestUnknown, codeBlobUnknown, codeNameUnknown:
		if e.Kind != regerr.Unavailable {
			e.Kind = regerr.NotFound
		}
	}
	return e
}

// errorCode keeps an upstream's error code only when it is a code
// registries are known to send: those of the distribution spec and
// Distribution's own. Clients are shown the code, so anything else, even
// text shaped like a code (a password of capitals that a hostile upstream
// echoes back), is dropped.
func errorCode(s string) string {
	if knownCodes[s] {
		return s
	}
	return ""
}

var knownCodes = map[string]bool{
	// The distribution spec's.
	"BLOB_UNKNOWN": true, "BLOB_UPLOAD_INVALID": true, "BLOB_UPLOAD_UNKNOWN": true, "DIGEST_INVALID": true,
	"MANIFEST_BLOB_UNKNOWN": true, "MANIFEST_INVALID": true, "MANIFEST_UNKNOWN": true, "NAME_INVALID": true,
	"NAME_UNKNOWN": true, "SIZE_INVALID": true, "UNAUTHORIZED": true, "DENIED": true, "UNSUPPORTED": true,
	codeTooManyRequests: true,
	// Distribution's errcode and v2 packages, and Harbor's not found.
	"UNKNOWN": true, "UNAVAILABLE": true, "TAG_INVALID": true, "MANIFEST_UNVERIFIED": true,
	"PAGINATION_NUMBER_INVALID": true, "RANGE_INVALID": true, "NOT_FOUND": true,
}

// kindOfStatus classifies a bare status. Other 4xx answers mean the
// upstream is healthy and cannot give this content as asked.
func kindOfStatus(status int) regerr.Kind {
	switch {
	case status == http.StatusBadRequest:
		return regerr.Invalid
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		return regerr.Denied
	case status == http.StatusTooManyRequests:
		return regerr.RateLimited
	case status == http.StatusRequestTimeout, status >= 500:
		return regerr.Unavailable
	}
	return regerr.NotFound
}

// transportError classifies an error from the transport stack: ggcr's ping
// or token exchange (which carry the auth server's status), or the network.
func (c call) transportError(ctx context.Context, err error, red redactor) *regerr.Error {
	var re *regerr.Error
	if errors.As(err, &re) {
		return re
	}
	var te *transport.Error
	if errors.As(err, &te) {
		// Copy the facts, not the *transport.Error: it holds the token
		// request, whose headers carry the Basic credentials.
		e := c.err(kindOfStatus(te.StatusCode), "authentication with the upstream failed")
		e.Status = te.StatusCode
		if len(te.Errors) > 0 {
			e.Code = errorCode(string(te.Errors[0].Code))
			e.Detail = red.text(te.Errors[0].Message)
		}
		if e.Code == codeTooManyRequests {
			e.Kind = regerr.RateLimited
		}
		return e
	}
	e := c.err(regerr.Unavailable, "")
	if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil && !errors.Is(cause, context.Canceled) && !errors.Is(cause, context.DeadlineExceeded) {
		// A watchdog of ours gave up on the transfer; say why.
		err = cause
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		// The caller gave up; that says nothing about the upstream.
		e.Kind = regerr.Internal
	}
	e.Err = redactURLError(err)
	return e
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

// redactor removes credentials from text an upstream sent back, before it
// is logged: a hostile or buggy upstream can echo the request's
// Authorization header in its error message.
type redactor struct {
	auth authn.Authenticator // the credentials this source is sent; may be nil
	// sent is the Authorization header of the request answered: it holds
	// the token the upstream's realm issued, which the configuration
	// does not know and which need not look like one (an opaque string).
	sent string
}

// forRequest is r that also redacts the credentials req carried.
func (r redactor) forRequest(req *http.Request) redactor {
	if req != nil {
		r.sent = req.Header.Get("Authorization")
	}
	return r
}

// credentialRE matches what an Authorization header or a token response
// carries: a scheme and its value, or a bare JWT, or a key such as
// password= or "token": and its value (with the scheme, if it has one).
var credentialRE = regexp.MustCompile(`(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]+|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9._-]+|` +
	`("?(?:password|passwd|secret|token|access_token|refresh_token|identitytoken|auth)"?\s*[:=]\s*"?)(?:(?:basic|bearer)\s+)?[^\s",}]+`)

func (r redactor) text(s string) string {
	if s == "" {
		return ""
	}
	if r.auth != nil {
		if cfg, err := r.auth.Authorization(); err == nil && cfg != nil {
			secrets := []string{cfg.Password, cfg.Auth, cfg.IdentityToken, cfg.RegistryToken}
			if cfg.Username != "" || cfg.Password != "" {
				secrets = append(secrets, base64.StdEncoding.EncodeToString([]byte(cfg.Username+":"+cfg.Password)))
			}
			s = redactAll(s, secrets)
		}
	}
	if r.sent != "" {
		_, cred, _ := strings.Cut(r.sent, " ")
		s = redactAll(s, []string{r.sent, cred})
	}
	s = credentialRE.ReplaceAllStringFunc(s, func(m string) string {
		if sub := credentialRE.FindStringSubmatch(m); sub[2] != "" {
			return sub[2] + "REDACTED"
		}
		if scheme, _, ok := strings.Cut(m, " "); ok && (strings.EqualFold(scheme, "basic") || strings.EqualFold(scheme, "bearer")) {
			return scheme + " REDACTED"
		}
		return "REDACTED"
	})
	return shorten(s, maxDetail)
}

func redactAll(s string, secrets []string) string {
	for _, sec := range secrets {
		if len(sec) >= 4 {
			s = strings.ReplaceAll(s, sec, "REDACTED")
		}
	}
	return s
}

func isPlainText(ct string) bool {
	if ct == "" {
		return true
	}
	mt, _, _ := strings.Cut(ct, ";")
	return strings.EqualFold(strings.TrimSpace(mt), "text/plain")
}

// parseRetryAfter reads Retry-After as delta-seconds or an HTTP-date. The
// caller caps what it honours (max_retry_after).
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		// Avoid overflow; a week is past any cap an operator sets.
		return time.Duration(min(secs, int64(7*24*time.Hour/time.Second))) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(min(t.Sub(now), 7*24*time.Hour), 0), true
	}
	return 0, false
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}

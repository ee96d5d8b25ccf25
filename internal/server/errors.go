package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/regcache/regcache/internal/regerr"
)

// errorKinds is the one table that maps a failure's kind to the OCI error
// a client gets: the status, the code, and the codes a classified error may
// name instead (the router says NAME_INVALID or DIGEST_INVALID, say). Like
// Distribution's errcode, every error leaves through it, in writeError.
var errorKinds = map[regerr.Kind]struct {
	status int
	code   string
	codes  []string
}{
	regerr.NotFound:     {http.StatusNotFound, "", []string{"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN", "NOT_FOUND"}},
	regerr.NameUnknown:  {http.StatusNotFound, "NAME_UNKNOWN", nil},
	regerr.Invalid:      {http.StatusBadRequest, "UNSUPPORTED", []string{"NAME_INVALID", "DIGEST_INVALID", "TAG_INVALID", "PAGINATION_NUMBER_INVALID"}},
	regerr.Unsupported:  {http.StatusMethodNotAllowed, "UNSUPPORTED", nil},
	regerr.Unauthorized: {http.StatusUnauthorized, "UNAUTHORIZED", nil},
	regerr.Denied:       {http.StatusForbidden, "DENIED", nil},
	regerr.RateLimited:  {http.StatusTooManyRequests, "TOOMANYREQUESTS", nil},
	regerr.Unavailable:  {http.StatusServiceUnavailable, "UNAVAILABLE", nil},
	regerr.BadContent:   {http.StatusBadGateway, "DIGEST_INVALID", nil},
	regerr.TooLarge:     {http.StatusBadGateway, "SIZE_INVALID", nil},
	regerr.Storage:      {http.StatusServiceUnavailable, "UNAVAILABLE", nil},
	regerr.Internal:     {http.StatusInternalServerError, "UNKNOWN", nil},
}

// notFoundCodes is the code a NotFound gets for each kind of request.
var notFoundCodes = map[Kind]string{KindManifest: "MANIFEST_UNKNOWN", KindBlob: "BLOB_UNKNOWN"}

// defaultRetryAfter is what a 429 says when the upstream gave no hint: a
// minute is a polite default that CI retry loops understand.
const defaultRetryAfter = time.Minute

// ociError is what a client is told about err, for a request of kind k.
type ociError struct {
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
}

// toOCI classifies err through the table.
func toOCI(err error, k Kind) ociError {
	var re *regerr.Error
	if !errors.As(err, &re) {
		re = &regerr.Error{Kind: regerr.KindOf(err), Message: "request failed"}
		if re.Kind == regerr.Unavailable {
			re.Message = "the upstream did not answer in time"
		}
	}
	row, ok := errorKinds[re.Kind]
	if !ok {
		row = errorKinds[regerr.Internal]
	}
	o := ociError{Status: row.status, Code: row.code, Message: re.ClientMessage(), RetryAfter: re.RetryAfter}
	for _, c := range row.codes {
		if re.Code == c {
			o.Code = c
		}
	}
	switch re.Kind {
	case regerr.NotFound:
		if o.Code == "" {
			o.Code = notFoundCodes[k]
		}
		if o.Code == "" {
			o.Code = "NAME_UNKNOWN"
		}
	case regerr.RateLimited:
		if o.RetryAfter <= 0 {
			o.RetryAfter = defaultRetryAfter
		}
		if re.Registry != "" {
			o.Message = fmt.Sprintf("upstream %s is rate limiting regcache and this content is not cached yet; "+
				"configure credentials under registries.%s.auth (an authenticated account has a higher limit) or add a mirror under registries.%s.mirrors (%s)",
				re.Registry, re.Registry, re.Registry, o.Message)
		}
	case regerr.Denied:
		if re.Registry != "" {
			o.Message = fmt.Sprintf("upstream %s refused regcache's credentials for this repository; check registries.%s.auth (%s)", re.Registry, re.Registry, o.Message)
		}
	case regerr.Unavailable:
		if re.Registry != "" {
			o.Message = fmt.Sprintf("upstream %s is unavailable and this content is not cached: %s", re.Registry, o.Message)
		}
	}
	return o
}

// writeError is the one place errors become OCI error JSON.
func writeError(w http.ResponseWriter, err error, k Kind) ociError {
	o := toOCI(err, k)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Del("Content-Length")
	h.Del("Docker-Content-Digest")
	h.Del("Etag")
	if o.RetryAfter > 0 && (o.Status == http.StatusTooManyRequests || o.Status == http.StatusServiceUnavailable) {
		h.Set("Retry-After", strconv.FormatInt(int64((o.RetryAfter+time.Second-1)/time.Second), 10))
	}
	w.WriteHeader(o.Status)
	body := struct {
		Errors []map[string]string `json:"errors"`
	}{Errors: []map[string]string{{"code": o.Code, "message": o.Message}}}
	_ = json.NewEncoder(w).Encode(body)
	return o
}

package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestResponseError(t *testing.T) {
	tests := []struct {
		name        string
		status      int
		header      map[string]string
		body        string
		wantCode    string
		wantMsg     string
		retryAfter  time.Duration
		notFound    bool
		limited     bool
		unavailable bool
	}{
		{
			name:     "manifest unknown",
			status:   404,
			body:     `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}`,
			wantCode: CodeManifestUnknown, wantMsg: "manifest unknown", notFound: true,
		},
		{
			name:     "bare 404",
			status:   404,
			wantCode: CodeBlobUnknown, notFound: true,
		},
		{
			name:     "name unknown",
			status:   404,
			body:     `{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}`,
			wantCode: CodeNameUnknown, wantMsg: "repository name not known to registry", notFound: true,
		},
		{
			name:   "docker hub pull limit",
			status: 429,
			header: map[string]string{"Retry-After": "21600"},
			body: `{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit. ` +
				`You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit"}]}`,
			wantCode: CodeTooManyRequests, wantMsg: "You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit",
			retryAfter: 6 * time.Hour, limited: true, unavailable: true,
		},
		{
			name:     "bare 429",
			status:   429,
			wantCode: CodeTooManyRequests, limited: true, unavailable: true,
		},
		{
			name:     "503 html from a proxy",
			status:   503,
			header:   map[string]string{"Content-Type": "text/html", "Retry-After": "10"},
			body:     "<html>down</html>",
			wantCode: CodeUnavailable, retryAfter: 10 * time.Second, unavailable: true,
		},
		{
			name:     "502 text",
			status:   502,
			body:     "bad gateway\n",
			wantCode: CodeUnavailable, wantMsg: "bad gateway", unavailable: true,
		},
		{
			name:     "denied",
			status:   403,
			body:     `{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`,
			wantCode: CodeDenied, wantMsg: "requested access to the resource is denied",
		},
		{
			name:     "unauthorized",
			status:   401,
			body:     `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository","Name":"x","Action":"pull"}]}]}`,
			wantCode: CodeUnauthorized, wantMsg: "authentication required",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: tt.status, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(tt.body))}
			for k, v := range tt.header {
				resp.Header.Set(k, v)
			}
			err := error(responseError(resp, Error{Registry: "docker.io", Op: "GET manifest"}, CodeBlobUnknown))
			var ue *Error
			if !errors.As(err, &ue) {
				t.Fatal("not an *Error")
			}
			if ue.StatusCode != tt.status || ue.Code != tt.wantCode || ue.Message != tt.wantMsg || ue.RetryAfter != tt.retryAfter {
				t.Errorf("got %+v", ue)
			}
			if IsNotFound(err) != tt.notFound || IsRateLimited(err) != tt.limited || IsUnavailable(err) != tt.unavailable {
				t.Errorf("IsNotFound=%v IsRateLimited=%v IsUnavailable=%v", IsNotFound(err), IsRateLimited(err), IsUnavailable(err))
			}
			// Still classifiable after wrapping.
			if wrapped := fmt.Errorf("pull: %w", err); IsUnavailable(wrapped) != tt.unavailable {
				t.Error("classification lost through wrapping")
			}
		})
	}
}

func TestErrorString(t *testing.T) {
	tests := []struct {
		err  Error
		want string
	}{
		{
			Error{Registry: "docker.io", Op: "GET manifest", Repository: "library/node", Reference: "21", StatusCode: 429, Code: "TOOMANYREQUESTS", Message: "limit", RetryAfter: time.Minute},
			"upstream docker.io: GET manifest library/node:21: status 429 TOOMANYREQUESTS: limit (retry after 1m0s)",
		},
		{
			Error{Registry: "ghcr.io", Op: "GET blob", Repository: "a/b", Reference: "sha256:abc", Err: context.DeadlineExceeded},
			"upstream ghcr.io: GET blob a/b@sha256:abc: context deadline exceeded",
		},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q\nwant      %q", got, tt.want)
		}
	}
}

func TestIsUnavailableNetwork(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{&Error{Err: errors.New("dial tcp: connection refused")}, true},
		{&Error{Err: context.DeadlineExceeded}, true},
		{&Error{Err: fmt.Errorf("get: %w", context.Canceled)}, false},
		{&Error{Code: CodeNameInvalid}, false},
		{errors.New("plain"), false},
		{nil, false},
	}
	for _, tt := range tests {
		if got := IsUnavailable(tt.err); got != tt.want {
			t.Errorf("IsUnavailable(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestRetryAfterThroughClient(t *testing.T) {
	f := newFakeRegistry(t, "anon")
	f.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		}
		return false
	}
	r := newTestRegistry(t, f, nil)
	_, err := r.GetManifest(context.Background(), "library/alpine", "3.19", nil)
	var ue *Error
	if !errors.As(err, &ue) || ue.StatusCode != 429 || ue.RetryAfter != 2*time.Minute || !IsRateLimited(err) {
		t.Fatalf("got %#v", err)
	}
	if until := r.Budget().RetryUntil; until.IsZero() {
		t.Error("Budget().RetryUntil not set after 429")
	}
	_ = httptest.NewRecorder
}

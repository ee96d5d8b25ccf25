package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/regerr"
)

func TestErrorTable(t *testing.T) {
	upstreamErr := func(k regerr.Kind) *regerr.Error {
		return &regerr.Error{Kind: k, Registry: "docker.io", Op: "GET manifest", Repo: "library/alpine", Ref: "3.19",
			Status: 500, Code: "WHATEVER", Detail: "upstream says: Authorization: Bearer s3cr3t", Err: errors.New("dial tcp 10.0.0.1:443: refused")}
	}
	tests := []struct {
		name       string
		err        error
		kind       Kind
		status     int
		code       string
		retryAfter string
		msgHas     string
	}{
		{"manifest not found", upstreamErr(regerr.NotFound), KindManifest, 404, "MANIFEST_UNKNOWN", "", "library/alpine:3.19"},
		{"blob not found", upstreamErr(regerr.NotFound), KindBlob, 404, "BLOB_UNKNOWN", "", ""},
		{"tags not found", upstreamErr(regerr.NotFound), KindTags, 404, "NAME_UNKNOWN", "", ""},
		{"router's own code kept", &regerr.Error{Kind: regerr.Invalid, Code: "DIGEST_INVALID", Message: "bad"}, KindBlob, 400, "DIGEST_INVALID", "", "bad"},
		{"upstream's odd code not relayed", &regerr.Error{Kind: regerr.Invalid, Code: "EVIL<script>"}, KindTags, 400, "UNSUPPORTED", "", ""},
		{"rate limited, no hint", upstreamErr(regerr.RateLimited), KindManifest, 429, "TOOMANYREQUESTS", "60", "registries.docker.io.auth"},
		{"rate limited with hint", &regerr.Error{Kind: regerr.RateLimited, Registry: "docker.io", RetryAfter: 1500 * time.Millisecond}, KindManifest, 429, "TOOMANYREQUESTS", "2", ""},
		{"unavailable", upstreamErr(regerr.Unavailable), KindBlob, 503, "UNAVAILABLE", "", "is unavailable"},
		{"denied", upstreamErr(regerr.Denied), KindManifest, 403, "DENIED", "", "check registries.docker.io.auth"},
		{"bad content", upstreamErr(regerr.BadContent), KindBlob, 502, "DIGEST_INVALID", "", ""},
		{"too large", upstreamErr(regerr.TooLarge), KindTags, 502, "SIZE_INVALID", "", ""},
		{"storage", &regerr.Error{Kind: regerr.Storage, Op: "open blob", Err: errors.New("EIO")}, KindBlob, 503, "UNAVAILABLE", "", ""},
		{"unsupported", regerr.New(regerr.Unsupported, "read-only"), KindUpload, 405, "UNSUPPORTED", "", "read-only"},
		{"unauthorized", regerr.New(regerr.Unauthorized, "log in"), KindBase, 401, "UNAUTHORIZED", "", ""},
		{"name unknown", regerr.New(regerr.NameUnknown, "not configured"), KindManifest, 404, "NAME_UNKNOWN", "", ""},
		{"unclassified", errors.New("boom"), KindBlob, 500, "UNKNOWN", "", ""},
		{"deadline", fmt.Errorf("fetch: %w", context.DeadlineExceeded), KindManifest, 503, "UNAVAILABLE", "", ""},
		{"wrapped", fmt.Errorf("x: %w", upstreamErr(regerr.NotFound)), KindBlob, 404, "BLOB_UNKNOWN", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			w.Header().Set("Docker-Content-Digest", "sha256:x")
			writeError(w, tc.err, tc.kind)
			if w.Code != tc.status {
				t.Errorf("status %d, want %d", w.Code, tc.status)
			}
			if got := w.Header().Get("Retry-After"); got != tc.retryAfter {
				t.Errorf("Retry-After %q, want %q", got, tc.retryAfter)
			}
			if w.Header().Get("Docker-Content-Digest") != "" || w.Header().Get("Content-Type") != "application/json" {
				t.Errorf("headers %v", w.Header())
			}
			var body struct {
				Errors []struct{ Code, Message string } `json:"errors"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || len(body.Errors) != 1 {
				t.Fatalf("body %q: %v", w.Body, err)
			}
			e := body.Errors[0]
			if e.Code != tc.code {
				t.Errorf("code %q, want %q", e.Code, tc.code)
			}
			if !strings.Contains(e.Message, tc.msgHas) {
				t.Errorf("message %q lacks %q", e.Message, tc.msgHas)
			}
			for _, secret := range []string{"s3cr3t", "10.0.0.1", "Bearer"} {
				if strings.Contains(e.Message, secret) {
					t.Errorf("message %q relays upstream text %q", e.Message, secret)
				}
			}
		})
	}
	for k := regerr.Internal; k <= regerr.Storage; k++ {
		if _, ok := errorKinds[k]; !ok {
			t.Errorf("kind %v has no row in the table", k)
		}
	}
	if w := httptest.NewRecorder(); writeError(w, regerr.New(regerr.Unavailable, "x"), KindBlob).Status != http.StatusServiceUnavailable {
		t.Error("writeError does not return what it wrote")
	}
}

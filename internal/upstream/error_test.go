package upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regcache/regcache/internal/regerr"
)

func TestResponseError(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		header     map[string]string
		body       string
		kind       regerr.Kind
		code       string
		detail     string
		retryAfter time.Duration
		transient  bool
	}{
		{
			name:   "manifest unknown",
			status: 404,
			body:   `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}`,
			kind:   regerr.NotFound, code: "MANIFEST_UNKNOWN", detail: "manifest unknown",
		},
		{
			name:   "bare 404",
			status: 404,
			kind:   regerr.NotFound,
		},
		{
			name:   "name unknown",
			status: 404,
			body:   `{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}`,
			kind:   regerr.NotFound, code: "NAME_UNKNOWN", detail: "repository name not known to registry",
		},
		{
			name:   "docker hub pull limit",
			status: 429,
			header: map[string]string{"Retry-After": "21600"},
			body: `{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit. ` +
				`You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit"}]}`,
			kind: regerr.RateLimited, code: "TOOMANYREQUESTS",
			detail:     "You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit",
			retryAfter: 6 * time.Hour, transient: true,
		},
		{
			name:   "bare 429",
			status: 429,
			kind:   regerr.RateLimited, transient: true,
		},
		{
			name:   "TOOMANYREQUESTS in another status",
			status: 403,
			body:   `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`,
			kind:   regerr.RateLimited, code: "TOOMANYREQUESTS", detail: "slow down", transient: true,
		},
		{
			name:   "503 html from a proxy",
			status: 503,
			header: map[string]string{"Content-Type": "text/html", "Retry-After": "10"},
			body:   "<html>down</html>",
			kind:   regerr.Unavailable, retryAfter: 10 * time.Second, transient: true,
		},
		{
			name:   "502 text",
			status: 502,
			body:   "bad gateway\n",
			kind:   regerr.Unavailable, detail: "bad gateway", transient: true,
		},
		{
			name:   "500 claiming the manifest is unknown stays unavailable",
			status: 500,
			body:   `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"storage driver error"}]}`,
			kind:   regerr.Unavailable, code: "MANIFEST_UNKNOWN", detail: "storage driver error", transient: true,
		},
		{
			name:   "408",
			status: 408,
			kind:   regerr.Unavailable, transient: true,
		},
		{
			name:   "denied",
			status: 403,
			body:   `{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`,
			kind:   regerr.Denied, code: "DENIED", detail: "requested access to the resource is denied",
		},
		{
			name:   "unauthorized",
			status: 401,
			body:   `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository","Name":"x","Action":"pull"}]}]}`,
			kind:   regerr.Denied, code: "UNAUTHORIZED", detail: "authentication required",
		},
		{
			name:   "invalid name",
			status: 400,
			body:   `{"errors":[{"code":"NAME_INVALID","message":"invalid repository name"}]}`,
			kind:   regerr.Invalid, code: "NAME_INVALID", detail: "invalid repository name",
		},
		{
			name:   "token server details",
			status: 401,
			body:   `{"details":"incorrect username or password"}`,
			kind:   regerr.Denied, detail: "incorrect username or password",
		},
		{
			// An object store's XML error can echo the request's signature.
			name:   "xml is not kept",
			status: 403,
			header: map[string]string{"Content-Type": "application/xml"},
			body:   "<Error><Code>AccessDenied</Code></Error>",
			kind:   regerr.Denied,
		},
		{
			// Clients see the code: only a code is kept.
			name:   "an over-long code is dropped",
			status: 400,
			body:   `{"errors":[{"code":"` + strings.Repeat("X", 100) + `","message":"odd"}]}`,
			kind:   regerr.Invalid, detail: "odd",
		},
		{
			// A hostile upstream can echo a password of capitals as its
			// code: only codes registries are known to send are kept.
			name:   "a code-shaped word that is no known code is dropped",
			status: 400,
			body:   `{"errors":[{"code":"S3CRET_PASSW0RD","message":"odd"}]}`,
			kind:   regerr.Invalid, detail: "odd",
		},
		{
			name:   "a code that is free text is dropped",
			status: 403,
			body:   `{"errors":[{"code":"you sent Basic YWxpY2U6cHc=","message":"odd"}]}`,
			kind:   regerr.Denied, detail: "odd",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: tt.status, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(tt.body))}
			for k, v := range tt.header {
				resp.Header.Set(k, v)
			}
			c := call{registry: "docker.io", op: "GET manifest", repo: "library/node", ref: "21"}
			e := c.responseError(resp, redactor{})
			if e.Kind != tt.kind || e.Status != tt.status || e.Code != tt.code || e.Detail != tt.detail || e.RetryAfter != tt.retryAfter {
				t.Errorf("got %+v\nwant kind %s status %d code %q detail %q retry after %s", e, tt.kind, tt.status, tt.code, tt.detail, tt.retryAfter)
			}
			if tt.detail != "" && strings.Contains(e.ClientMessage(), tt.detail) {
				t.Errorf("ClientMessage %q holds the upstream's message", e.ClientMessage())
			}
			// Still classifiable after wrapping.
			wrapped := fmt.Errorf("pull: %w", e)
			if !regerr.Is(wrapped, tt.kind) || regerr.Transient(wrapped) != tt.transient {
				t.Errorf("through wrapping: kind %s, transient %v; want %s, %v", regerr.KindOf(wrapped), regerr.Transient(wrapped), tt.kind, tt.transient)
			}
		})
	}
}

// TestErrorString: the two faces of an error as upstream builds them.
func TestErrorString(t *testing.T) {
	limited := &http.Response{StatusCode: 429, Header: http.Header{"Retry-After": {"60"}},
		Body: io.NopCloser(strings.NewReader(`{"errors":[{"code":"TOOMANYREQUESTS","message":"limit"}]}`))}
	tests := []struct {
		err        *regerr.Error
		want, resp string
	}{
		{
			call{registry: "docker.io", op: "GET manifest", repo: "library/node", ref: "21"}.responseError(limited, redactor{}),
			"upstream docker.io: GET manifest library/node:21: status 429 TOOMANYREQUESTS: limit (retry after 1m0s)",
			"upstream docker.io: GET manifest library/node:21: status 429 TOOMANYREQUESTS",
		},
		{
			call{registry: "ghcr.io", op: "GET blob", repo: "a/b", ref: "sha256:abc"}.transportError(context.Background(), context.DeadlineExceeded, redactor{}),
			"upstream ghcr.io: GET blob a/b@sha256:abc: context deadline exceeded",
			"upstream ghcr.io: GET blob a/b@sha256:abc",
		},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q\nwant      %q", got, tt.want)
		}
		if got := tt.err.ClientMessage(); got != tt.resp {
			t.Errorf("ClientMessage() = %q\nwant              %q", got, tt.resp)
		}
	}
}

// TestTransportErrorKinds: failures below HTTP (the network, ggcr's ping
// and token exchange, our own watchdog) are classified too.
func TestTransportErrorKinds(t *testing.T) {
	live := context.Background()
	cancelled, cancel := context.WithCancel(live)
	cancel()
	slow, cut := context.WithCancelCause(live)
	cut(fmt.Errorf("%w: 12 bytes in 30s", errTooSlow))
	authErr := func(status int, code transport.ErrorCode, msg string) error {
		te := &transport.Error{StatusCode: status}
		if code != "" {
			te.Errors = []transport.Diagnostic{{Code: code, Message: msg}}
		}
		return fmt.Errorf("ping: %w", te)
	}
	own := &regerr.Error{Kind: regerr.BadContent, Message: "classified already"}
	tests := []struct {
		name      string
		ctx       context.Context
		err       error
		kind      regerr.Kind
		status    int
		code      string
		transient bool
		text      string // in Error()
	}{
		{"connection refused", live, errors.New("dial tcp: connection refused"), regerr.Unavailable, 0, "", true, "connection refused"},
		{"deadline", live, context.DeadlineExceeded, regerr.Unavailable, 0, "", true, "deadline exceeded"},
		{"the caller cancelled", cancelled, fmt.Errorf("get: %w", context.Canceled), regerr.Internal, 0, "", false, "canceled"},
		{"the watchdog cut it", slow, fmt.Errorf("read: %w", context.Canceled), regerr.Unavailable, 0, "", true, "minimum rate"},
		{"token refused", live, authErr(401, "UNAUTHORIZED", "bad credentials"), regerr.Denied, 401, "UNAUTHORIZED", false, "bad credentials"},
		{"token rate limited", live, authErr(429, "TOOMANYREQUESTS", "slow down"), regerr.RateLimited, 429, "TOOMANYREQUESTS", true, "slow down"},
		{"ping 503", live, authErr(503, "", ""), regerr.Unavailable, 503, "", true, "status 503"},
		{"already classified", live, own, regerr.BadContent, 0, "", false, "classified already"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := call{registry: "r", op: "GET blob"}.transportError(tt.ctx, tt.err, redactor{})
			if e.Kind != tt.kind || e.Status != tt.status || e.Code != tt.code || regerr.Transient(e) != tt.transient {
				t.Errorf("got kind %s status %d code %q transient %v; want %s %d %q %v", e.Kind, e.Status, e.Code, regerr.Transient(e), tt.kind, tt.status, tt.code, tt.transient)
			}
			if !strings.Contains(e.Error(), tt.text) {
				t.Errorf("Error() = %q, want it to mention %q", e.Error(), tt.text)
			}
		})
	}
	// Errors that are not the upstream's say nothing about its health.
	for _, err := range []error{errors.New("plain"), nil} {
		if regerr.Transient(err) {
			t.Errorf("Transient(%v) = true", err)
		}
	}
	if got := (call{}).transportError(live, own, redactor{}); got != own {
		t.Error("an error classified below was classified again")
	}
}

func TestRetryAfterThroughClient(t *testing.T) {
	f := newFakeRegistry(t, "anon")
	f.putBlob([]byte("layer"))
	f.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			w.Header().Set("Retry-After", "120")
			w.WriteHeader(http.StatusTooManyRequests)
			return true
		}
		return false
	}
	clock := newFakeClock()
	r := newRegistryT(t, Config{URL: f.srv.URL}, clock)
	ctx := context.Background()
	_, err := r.ManifestByTag(ctx, repo(t, "library/alpine"), tag(t, "3.19"), nil)
	if e := asError(t, err); e.Status != 429 || e.RetryAfter != 2*time.Minute || e.Kind != regerr.RateLimited {
		t.Fatalf("got %#v", e)
	}
	// No ratelimit-* headers: an abuse limit on manifests, not the pull
	// limit, so manifests pause (HEADs too) and the pull-limit mark stays
	// clear.
	b := r.Budget()
	if want := clock.Now().Add(2 * time.Minute); !b.Paused[ClassManifests].Equal(want) || !b.RetryUntil.IsZero() {
		t.Errorf("Budget() = %+v; want manifests paused until %s and no RetryUntil", b, want)
	}
	heads := f.count("HEAD /v2/library/alpine/manifests/3.19")
	if _, err := r.HeadManifest(ctx, repo(t, "library/alpine"), byTag(t, "3.19"), nil); !regerr.Is(err, regerr.RateLimited) || !isNotSent(err) {
		t.Errorf("HEAD during the manifests pause: %v; want a rate-limited refusal, not sent", err)
	}
	if f.count("HEAD /v2/library/alpine/manifests/3.19") != heads {
		t.Error("a HEAD was sent during the pause")
	}
	// Blobs are another class.
	if b, err := r.Blob(ctx, repo(t, "library/alpine"), digest.FromString("layer"), -1); err != nil {
		t.Errorf("blob during a manifests pause: %v", err)
	} else {
		b.Close()
	}
}

// TestUpstreamTextRedacted: an upstream (the origin, or a mirror with its
// own credentials) that echoes the credentials it was sent (the
// Authorization header, or the password) in its error message, code or a
// text/plain body must not put them in errors or logs, and nothing it
// wrote in free text may reach a client.
func TestUpstreamTextRedacted(t *testing.T) {
	const marker = "UPSTREAM-SAYS"
	for _, where := range []string{"origin", "mirror"} {
		for _, mode := range []string{"basic", "bearer"} {
			for _, tc := range []struct {
				name  string
				write func(w http.ResponseWriter, authz, password string)
			}{
				{"json message", func(w http.ResponseWriter, authz, password string) {
					ociError(w, http.StatusForbidden, "DENIED", marker+" you sent Authorization: "+authz+" and password "+password)
				}},
				{"json message as key=value", func(w http.ResponseWriter, authz, password string) {
					ociError(w, http.StatusBadRequest, "UNSUPPORTED", marker+" auth="+authz+" password="+password)
				}},
				{"json code", func(w http.ResponseWriter, authz, password string) {
					ociError(w, http.StatusForbidden, authz+" "+password, marker)
				}},
				{"text/plain body", func(w http.ResponseWriter, authz, password string) {
					w.Header().Set("Content-Type", "text/plain; charset=utf-8")
					w.WriteHeader(http.StatusInternalServerError)
					fmt.Fprintf(w, "%s\nAuthorization: %s\npassword: %s\n", marker, authz, password)
				}},
			} {
				t.Run(where+"/"+mode+"/"+tc.name, func(t *testing.T) {
					f := newFakeRegistry(t, mode)
					var mu sync.Mutex
					var sent []string
					f.hook = func(w http.ResponseWriter, r *http.Request) bool {
						authz := r.Header.Get("Authorization")
						if !strings.Contains(r.URL.Path, "/manifests/") || authz == "" {
							return false // let the fake challenge and hand out a token
						}
						mu.Lock()
						sent = append(sent, authz)
						mu.Unlock()
						tc.write(w, authz, f.pass)
						return true
					}
					var logs bytes.Buffer
					cfg := Config{Name: "test.io", Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
					if where == "origin" {
						cfg.URL, cfg.Auth = f.srv.URL, credsFor(f)
					} else {
						cfg.URL = newFakeRegistry(t, "anon").srv.URL
						cfg.Mirrors = []MirrorConfig{{Name: "m", URL: f.srv.URL, Auth: credsFor(f)}}
					}
					r, err := New(cfg)
					if err != nil {
						t.Fatal(err)
					}
					if where == "origin" {
						_, err = r.ManifestByTag(context.Background(), repo(t, "library/alpine"), tag(t, "3.19"), nil)
					} else {
						_, err = r.TagAtMirror(context.Background(), repo(t, "library/alpine"), tag(t, "3.19"), nil)
					}
					e := asError(t, err)
					mu.Lock()
					defer mu.Unlock()
					if len(sent) == 0 {
						t.Fatal("the upstream never saw credentials; the test proves nothing")
					}
					secrets := []string{f.pass, base64.StdEncoding.EncodeToString([]byte(f.user + ":" + f.pass))}
					for _, a := range sent {
						_, cred, _ := strings.Cut(a, " ")
						secrets = append(secrets, cred) // the bearer token, or the Basic value
					}
					for what, s := range map[string]string{"Error()": e.Error(), "ClientMessage()": e.ClientMessage(), "logs": logs.String()} {
						for _, sec := range secrets {
							if strings.Contains(s, sec) {
								t.Errorf("%s leaks %q: %s", what, sec, s)
							}
						}
					}
					if strings.Contains(e.ClientMessage(), marker) {
						t.Errorf("ClientMessage holds the upstream's text: %s", e.ClientMessage())
					}
					if tc.name != "json code" && !strings.Contains(e.Error(), marker) {
						t.Errorf("Error() lost the upstream's (redacted) message: %s", e.Error())
					}
					if where == "mirror" && !strings.Contains(logs.String(), marker) {
						t.Error("the mirror's failure was not logged; the log check proves nothing")
					}
				})
			}
		}
	}
}

func TestRedactorText(t *testing.T) {
	red := redactor{auth: credsForUser("alice", "s3cret-Pa55")}
	tests := []struct{ in, want string }{
		{"no secrets here", "no secrets here"},
		{"Authorization: Basic YWxpY2U6czNjcmV0LVBhNTU=", "Authorization: Basic REDACTED"},
		{"got bearer abc.def-ghi", "got bearer REDACTED"},
		{"password s3cret-Pa55 wrong", "password REDACTED wrong"},
		{`{"token":"abc123"}`, `{"token":"REDACTED"}`},
		{"auth=Bearer tok-1 rest", "auth=REDACTED rest"},
		{"jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "jwt REDACTED"},
		{strings.Repeat("a", maxDetail+10), strings.Repeat("a", maxDetail) + "…"},
	}
	for _, tt := range tests {
		if got := red.text(tt.in); got != tt.want {
			t.Errorf("text(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// The token a request carried is redacted from the answer's text however
// it looks: an upstream's realm may issue opaque tokens that no pattern
// knows for one.
func TestRedactorRequestCredentials(t *testing.T) {
	req := &http.Request{Header: http.Header{"Authorization": {"Bearer opaque0123456789"}}}
	body := `{"errors":[{"code":"DENIED","message":"token opaque0123456789 is not valid"}]}`
	resp := &http.Response{StatusCode: 403, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(body)), Request: req}
	e := call{registry: "r", op: "GET blob"}.responseError(resp, redactor{})
	if e.Detail != "token REDACTED is not valid" {
		t.Errorf("Detail %q", e.Detail)
	}
}

// TestManifestMediaTypeServed: a manifest is served only as a manifest
// type; an answer typed as a web page is refused, and a generic type is
// replaced by the type the document names.
func TestManifestMediaTypeServed(t *testing.T) {
	docker := `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}`
	tests := []struct {
		name, ct, body string
		wantType       string // "" = refused as BadContent
	}{
		{"html with a script", "text/html", `<html><script>alert(document.cookie)</script></html>`, ""},
		{"html naming itself a manifest", "text/html; charset=utf-8", `{"schemaVersion":2,"mediaType":"text/html"}`, ""},
		{"octet-stream naming its type", "application/octet-stream", docker, "application/vnd.docker.distribution.manifest.v2+json"},
		{"its own type", ocispec.MediaTypeImageManifest, testManifest, ocispec.MediaTypeImageManifest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeRegistry(t, "anon")
			d := f.putManifest("library/x", "t", tt.ct, []byte(tt.body))
			r := newTestRegistry(t, f, nil)
			ctx := context.Background()
			mTag, errTag := r.ManifestByTag(ctx, repo(t, "library/x"), tag(t, "t"), nil)
			mDigest, errDigest := r.Manifest(ctx, repo(t, "library/x"), d, AnySource)
			for _, got := range []struct {
				m   Manifest
				err error
			}{{mTag, errTag}, {mDigest, errDigest}} {
				if tt.wantType == "" {
					if !regerr.Is(got.err, regerr.BadContent) || got.m.Data != nil {
						t.Errorf("got %q, %v; want BadContent and no bytes", got.m.MediaType, got.err)
					}
					continue
				}
				if got.err != nil || got.m.MediaType != tt.wantType || !bytes.Equal(got.m.Data, []byte(tt.body)) {
					t.Errorf("got %q, %v; want %q and the bytes as sent", got.m.MediaType, got.err, tt.wantType)
				}
			}
		})
	}
}

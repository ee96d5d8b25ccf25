package upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const testManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`

func newTestRegistry(t *testing.T, f *fakeRegistry, auth authn.Authenticator) *Registry {
	t.Helper()
	r, err := New(Config{Name: "test.io", URL: f.srv.URL, Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func credsFor(f *fakeRegistry) authn.Authenticator {
	return authn.FromConfig(authn.AuthConfig{Username: f.user, Password: f.pass})
}

func TestNewDoesNoIO(t *testing.T) {
	// A server that is already closed: New must still succeed, and the
	// first call must fail as "unavailable", not panic or hang.
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	r, err := New(Config{Name: "down.io", URL: srv.URL})
	if err != nil {
		t.Fatalf("New with upstream down: %v", err)
	}
	_, err = r.HeadManifest(context.Background(), "library/alpine", "3.19", nil)
	var ue *Error
	if !errors.As(err, &ue) || ue.StatusCode != 0 || !IsUnavailable(err) {
		t.Fatalf("want unreachable *Error, got %#v", err)
	}
	if !strings.Contains(err.Error(), "down.io") || !strings.Contains(err.Error(), "HEAD manifest") {
		t.Errorf("error should name registry and op: %v", err)
	}
}

func TestNewRejectsBadURLs(t *testing.T) {
	tests := []struct {
		name string
		url  string
	}{
		{"credentials", "https://bob:hunter2@registry.example"},
		{"path", "https://registry.example/v2/"},
		{"scheme", "ftp://registry.example"},
		{"no host", "https://"},
		{"query", "https://registry.example?x=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(Config{Name: "x", URL: tt.url})
			if err == nil {
				t.Fatal("want error")
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error leaks the password: %v", err)
			}
		})
	}
}

func TestManifestAuthModes(t *testing.T) {
	tests := []struct {
		mode string
		auth func(*fakeRegistry) authn.Authenticator
	}{
		{"anon", func(*fakeRegistry) authn.Authenticator { return nil }},
		{"bearer", func(*fakeRegistry) authn.Authenticator { return nil }},
		{"bearer", credsFor},
		{"basic", credsFor},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			f := newFakeRegistry(t, tt.mode)
			d := f.putManifest("library/alpine", "3.19", ocispec.MediaTypeImageManifest, []byte(testManifest))
			r := newTestRegistry(t, f, tt.auth(f))
			ctx := context.Background()

			desc, err := r.HeadManifest(ctx, "library/alpine", "3.19", nil)
			if err != nil {
				t.Fatal(err)
			}
			want := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: int64(len(testManifest))}
			if desc.MediaType != want.MediaType || desc.Digest != want.Digest || desc.Size != want.Size {
				t.Errorf("HeadManifest = %+v, want %+v", desc, want)
			}

			for _, ref := range []string{"3.19", d.String()} {
				m, err := r.GetManifest(ctx, "library/alpine", ref, nil)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(m.Data, []byte(testManifest)) || m.Digest != d || m.Size != int64(len(testManifest)) || m.MediaType != want.MediaType || m.Source != SourceOrigin {
					t.Errorf("GetManifest(%s) = %+v", ref, m.Descriptor)
				}
			}
			if got := f.count("GET /v2/library/alpine/manifests/3.19"); got != 1 {
				t.Errorf("manifest GETs by tag = %d, want exactly 1", got)
			}
			// One ping and (for bearer) one token for the repository,
			// reused by every call after the first.
			pings, tokens := f.stats()
			if pings != 1 {
				t.Errorf("pings = %d, want 1", pings)
			}
			if tt.mode == "bearer" && tokens != 1 {
				t.Errorf("token fetches = %d, want 1", tokens)
			}
		})
	}
}

func TestHeadManifestNeverGets(t *testing.T) {
	f := newFakeRegistry(t, "anon")
	f.putManifest("library/alpine", "3.19", ocispec.MediaTypeImageManifest, []byte(testManifest))
	r := newTestRegistry(t, f, nil)
	_, err := r.HeadManifest(context.Background(), "library/alpine", "missing", nil)
	if !IsNotFound(err) {
		t.Fatalf("want not found, got %v", err)
	}
	var ue *Error
	if errors.As(err, &ue); ue.Code != CodeManifestUnknown {
		t.Errorf("Code = %q, want MANIFEST_UNKNOWN (bare 404 on HEAD)", ue.Code)
	}
	if got := f.count("GET /v2/library/alpine/manifests/missing"); got != 0 {
		t.Errorf("a failed HEAD turned into %d GETs", got)
	}
	// Digest header absent: Digest is empty, not invented.
	f.mu.Lock()
	f.manifests["library/alpine:nodigest"] = fakeManifest{mediaType: ocispec.MediaTypeImageIndex, data: []byte(testManifest), header: "-"}
	f.mu.Unlock()
	desc, err := r.HeadManifest(context.Background(), "library/alpine", "nodigest", []string{ocispec.MediaTypeImageIndex})
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != "" || desc.MediaType != ocispec.MediaTypeImageIndex {
		t.Errorf("HeadManifest without digest header = %+v", desc)
	}
}

func TestGetManifestVerifies(t *testing.T) {
	good := []byte(testManifest)
	other := []byte(`{"schemaVersion":2}`)
	tests := []struct {
		name     string
		stored   fakeManifest
		ref      func(d digest.Digest) string
		wantCode string
	}{
		{"tag, header matches", fakeManifest{data: good}, func(digest.Digest) string { return "t" }, ""},
		{"tag, no header", fakeManifest{data: good, header: "-"}, func(digest.Digest) string { return "t" }, ""},
		{"tag, header lies", fakeManifest{data: good, header: digest.FromBytes(other).String()}, func(digest.Digest) string { return "t" }, CodeDigestInvalid},
		{"tag, header garbled", fakeManifest{data: good, header: "sha256:nothex"}, func(digest.Digest) string { return "t" }, CodeDigestInvalid},
		{"digest, body differs", fakeManifest{data: other, header: "-"}, func(d digest.Digest) string { return d.String() }, CodeDigestInvalid},
		{"digest, body matches", fakeManifest{data: good}, func(d digest.Digest) string { return d.String() }, ""},
		{"too big", fakeManifest{data: bytes.Repeat([]byte(" "), MaxManifestSize+1), header: "-"}, func(digest.Digest) string { return "t" }, CodeManifestInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeRegistry(t, "anon")
			r := newTestRegistry(t, f, nil)
			want := digest.FromBytes(good)
			tt.stored.mediaType = ocispec.MediaTypeImageManifest
			ref := tt.ref(want)
			key := "library/x:" + ref
			if strings.Contains(ref, ":") {
				key = "library/x@" + ref
			}
			f.mu.Lock()
			f.manifests[key] = tt.stored
			f.mu.Unlock()

			m, err := r.GetManifest(context.Background(), "library/x", ref, nil)
			if tt.wantCode == "" {
				if err != nil {
					t.Fatal(err)
				}
				if m.Digest != want {
					t.Errorf("Digest = %s, want %s", m.Digest, want)
				}
				return
			}
			var ue *Error
			if !errors.As(err, &ue) || ue.Code != tt.wantCode {
				t.Fatalf("want Code %s, got %v", tt.wantCode, err)
			}
			if m.Data != nil || m.Digest != "" {
				t.Errorf("a rejected manifest was returned: %+v", m.Descriptor)
			}
		})
	}
}

func TestGetBlobRedirectDropsAuthorization(t *testing.T) {
	for _, mode := range []string{"basic", "bearer"} {
		t.Run(mode, func(t *testing.T) {
			f := newFakeRegistry(t, mode)
			blob := []byte("layer bytes")
			d := f.putBlob(blob)

			var mu sync.Mutex
			var cdnAuth []string
			cdn := listenOn(t, "127.0.0.2:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				cdnAuth = append(cdnAuth, r.Header.Get("Authorization"))
				mu.Unlock()
				w.Write(blob)
			}))
			// Same IP, other port: net/http would keep the header here.
			samehost := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				cdnAuth = append(cdnAuth, r.Header.Get("Authorization"))
				mu.Unlock()
				w.Write(blob)
			}))
			t.Cleanup(samehost.Close)

			r := newTestRegistry(t, f, credsFor(f))
			for _, target := range []string{cdn.URL, samehost.URL} {
				f.mu.Lock()
				f.blobBaseURL = target
				f.mu.Unlock()
				b, err := r.GetBlob(context.Background(), "library/alpine", d)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(b.Body)
				b.Body.Close()
				if !bytes.Equal(got, blob) {
					t.Errorf("body = %q", got)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if len(cdnAuth) != 2 {
				t.Fatalf("CDN saw %d requests, want 2", len(cdnAuth))
			}
			for i, a := range cdnAuth {
				if a != "" {
					t.Errorf("redirect target %d got Authorization %q", i, a)
				}
			}
		})
	}
}

func TestBlob(t *testing.T) {
	f := newFakeRegistry(t, "bearer")
	blob := []byte("hello layer")
	d := f.putBlob(blob)
	r := newTestRegistry(t, f, nil)
	ctx := context.Background()

	desc, err := r.HeadBlob(ctx, "library/alpine", d)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != d || desc.Size != int64(len(blob)) {
		t.Errorf("HeadBlob = %+v", desc)
	}
	b, err := r.GetBlob(ctx, "library/alpine", d)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Body.Close()
	got, _ := io.ReadAll(b.Body)
	if !bytes.Equal(got, blob) || b.Size != int64(len(blob)) || b.Source != SourceOrigin {
		t.Errorf("GetBlob = %q size %d source %q", got, b.Size, b.Source)
	}

	missing := digest.FromString("nope")
	if _, err := r.HeadBlob(ctx, "library/alpine", missing); !IsNotFound(err) {
		t.Errorf("HeadBlob missing: %v", err)
	}
	_, err = r.GetBlob(ctx, "library/alpine", missing)
	var ue *Error
	if !errors.As(err, &ue) || ue.Code != CodeBlobUnknown || !IsNotFound(err) {
		t.Errorf("GetBlob missing: %v", err)
	}
}

func TestTokenRefreshAfterExpiry(t *testing.T) {
	f := newFakeRegistry(t, "bearer")
	f.putManifest("library/alpine", "3.19", ocispec.MediaTypeImageManifest, []byte(testManifest))
	r := newTestRegistry(t, f, nil)
	ctx := context.Background()
	if _, err := r.HeadManifest(ctx, "library/alpine", "3.19", nil); err != nil {
		t.Fatal(err)
	}
	f.expireTokens()
	if _, err := r.GetManifest(ctx, "library/alpine", "3.19", nil); err != nil {
		t.Fatalf("GET after token expiry: %v", err)
	}
	_, tokens := f.stats()
	if tokens != 2 {
		t.Errorf("token fetches = %d, want 2 (initial + refresh)", tokens)
	}
	// The 401 is not counted by Docker Hub; the fake counts only
	// authorised requests, and there must be exactly one.
	if got := f.count("GET /v2/library/alpine/manifests/3.19"); got != 1 {
		t.Errorf("authorised manifest GETs = %d, want 1", got)
	}
}

func TestWrongPasswordNotLeaked(t *testing.T) {
	for _, mode := range []string{"bearer", "basic"} {
		t.Run(mode, func(t *testing.T) {
			f := newFakeRegistry(t, mode)
			const password = "wr0ng-S3cret-XYZ"
			var logs bytes.Buffer
			r, err := New(Config{
				Name:   "test.io",
				URL:    f.srv.URL,
				Auth:   authn.FromConfig(authn.AuthConfig{Username: f.user, Password: password}),
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			})
			if err != nil {
				t.Fatal(err)
			}
			_, err = r.GetManifest(context.Background(), "library/alpine", "3.19", nil)
			var ue *Error
			if !errors.As(err, &ue) || ue.StatusCode != http.StatusUnauthorized || ue.Code != CodeUnauthorized {
				t.Fatalf("want 401 UNAUTHORIZED *Error, got %#v", err)
			}
			basic := base64.StdEncoding.EncodeToString([]byte(f.user + ":" + password))
			for _, s := range []string{err.Error(), logs.String()} {
				if strings.Contains(s, password) || strings.Contains(s, basic) {
					t.Errorf("credentials leaked: %s", s)
				}
			}
			if IsUnavailable(err) {
				t.Error("a wrong password is not 'unavailable'")
			}
		})
	}
}

func TestScopeCreationShared(t *testing.T) {
	f := newFakeRegistry(t, "bearer")
	f.putManifest("library/alpine", "3.19", ocispec.MediaTypeImageManifest, []byte(testManifest))
	// Hold the first ping until every caller is waiting, so they all race
	// for the same creation.
	release := make(chan struct{})
	f.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/v2/" {
			<-release
		}
		return false
	}
	r := newTestRegistry(t, f, nil)
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			_, err := r.HeadManifest(context.Background(), "library/alpine", "3.19", nil)
			errs <- err
		})
	}
	// Whatever the interleaving, a caller either joins the creation in
	// flight or finds its result cached, so there is exactly one ping and
	// one token fetch. Holding the ping makes overlap (the case
	// singleflight exists for) near certain.
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := r.origin.scopes.len(); got != 1 {
		t.Errorf("cached transports = %d, want 1", got)
	}
	if pings, tokens := f.stats(); pings != 1 || tokens != 1 {
		t.Errorf("pings = %d, token fetches = %d; want 1 and 1", pings, tokens)
	}
}

func TestScopeCreationFailureNotCached(t *testing.T) {
	f := newFakeRegistry(t, "bearer")
	f.putManifest("library/alpine", "3.19", ocispec.MediaTypeImageManifest, []byte(testManifest))
	var mu sync.Mutex
	down := true
	f.hook = func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		defer mu.Unlock()
		if down {
			ociError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "maintenance")
			return true
		}
		return false
	}
	r := newTestRegistry(t, f, nil)
	ctx := context.Background()
	_, err := r.HeadManifest(ctx, "library/alpine", "3.19", nil)
	var ue *Error
	if !errors.As(err, &ue) || ue.StatusCode != http.StatusServiceUnavailable || !IsUnavailable(err) {
		t.Fatalf("want 503 *Error, got %#v", err)
	}
	mu.Lock()
	down = false
	mu.Unlock()
	if _, err := r.HeadManifest(ctx, "library/alpine", "3.19", nil); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

func TestScopeCacheBounded(t *testing.T) {
	c := newScopeCache(mustRegistry(t, "example.com"), nil, http.DefaultTransport, 2)
	rt := http.DefaultTransport
	c.add("a", rt)
	c.add("b", rt)
	c.lookup("a") // a is now the most recent
	c.add("c", rt)
	if _, ok := c.lookup("b"); ok {
		t.Error("least recently used entry b was kept")
	}
	for _, k := range []string{"a", "c"} {
		if _, ok := c.lookup(k); !ok {
			t.Errorf("%s was evicted", k)
		}
	}
	if c.len() != 2 {
		t.Errorf("len = %d, want 2", c.len())
	}
}

func TestDo(t *testing.T) {
	f := newFakeRegistry(t, "bearer")
	var gotAuth, gotCookie, gotAccept string
	var gotQuery url.Values
	f.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/tags/list") {
			gotAuth, gotCookie, gotAccept = r.Header.Get("Authorization"), r.Header.Get("Cookie"), r.Header.Get("Accept")
			gotQuery = r.URL.Query()
		}
		return false
	}
	r := newTestRegistry(t, f, nil)
	h := http.Header{}
	h.Set("Authorization", "Bearer client-token")
	h.Set("Cookie", "session=1")
	h.Set("Accept", "application/json")
	resp, err := r.Do(context.Background(), http.MethodGet, "library/alpine", "tags/list", url.Values{"n": {"10"}}, h)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"tags"`) {
		t.Errorf("body = %s", body)
	}
	if gotAuth == "Bearer client-token" || gotCookie != "" {
		t.Errorf("client credentials forwarded: Authorization %q Cookie %q", gotAuth, gotCookie)
	}
	if gotAccept != "application/json" || gotQuery.Get("n") != "10" {
		t.Errorf("Accept %q query %v not passed", gotAccept, gotQuery)
	}

	_, err = r.Do(context.Background(), http.MethodGet, "library/alpine", "referrers/sha256:"+strings.Repeat("a", 64), nil, nil)
	if !IsNotFound(err) {
		t.Errorf("want not found *Error for 404, got %v", err)
	}
	for _, bad := range []struct{ method, suffix string }{
		{http.MethodDelete, "tags/list"},
		{http.MethodGet, "../../other/tags/list"},
		{http.MethodGet, "/tags/list"},
	} {
		if _, err := r.Do(context.Background(), bad.method, "library/alpine", bad.suffix, nil, nil); err == nil {
			t.Errorf("Do(%s, %s) should fail", bad.method, bad.suffix)
		}
	}
}

func TestArgumentValidation(t *testing.T) {
	f := newFakeRegistry(t, "anon")
	r := newTestRegistry(t, f, nil)
	ctx := context.Background()
	tests := []struct {
		repo, ref string
		code      string
	}{
		{"../etc", "latest", CodeNameInvalid},
		{"Library/Alpine", "latest", CodeNameInvalid},
		{"library/alpine", "bad/tag", CodeTagInvalid},
		{"library/alpine", "sha256:short", CodeDigestInvalid},
	}
	for _, tt := range tests {
		_, err := r.GetManifest(ctx, tt.repo, tt.ref, nil)
		var ue *Error
		if !errors.As(err, &ue) || ue.Code != tt.code {
			t.Errorf("GetManifest(%q, %q) = %v, want %s", tt.repo, tt.ref, err, tt.code)
		}
	}
	if n := len(f.counts); n != 0 {
		t.Errorf("invalid arguments reached the upstream: %v", f.counts)
	}
}

func TestRedirectSignatureNotLeaked(t *testing.T) {
	const sig = "verify=1700000000-SECRETSIG"
	f := newFakeRegistry(t, "anon")
	d := f.putBlob([]byte("x"))
	tests := []struct {
		name string
		cdn  func(t *testing.T) string
	}{
		{"unreachable CDN", func(*testing.T) string {
			srv := httptest.NewServer(http.NotFoundHandler())
			srv.Close()
			return srv.URL
		}},
		{"CDN XML error echoing the signature", func(t *testing.T) string {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(http.StatusForbidden)
				io.WriteString(w, "<Error><Code>SignatureDoesNotMatch</Code><SignatureProvided>"+r.URL.RawQuery+"</SignatureProvided></Error>")
			}))
			t.Cleanup(srv.Close)
			return srv.URL
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cdn := tt.cdn(t)
			f.mu.Lock()
			f.hook = func(w http.ResponseWriter, r *http.Request) bool {
				if strings.Contains(r.URL.Path, "/blobs/") {
					http.Redirect(w, r, cdn+"/data?"+sig, http.StatusTemporaryRedirect)
					return true
				}
				return false
			}
			f.mu.Unlock()
			r := newTestRegistry(t, f, nil)
			_, err := r.GetBlob(context.Background(), "library/alpine", d)
			if err == nil {
				t.Fatal("want error")
			}
			if strings.Contains(err.Error(), "SECRETSIG") {
				t.Errorf("error leaks the CDN signature: %v", err)
			}
		})
	}
}

package upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
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

	"github.com/regcache/regcache/internal/regerr"
)

func TestNewDoesNoIO(t *testing.T) {
	// A server that is already closed: New must still succeed, and the
	// first call must fail as "unavailable", not panic or hang.
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	r, err := New(Config{Name: "down.io", URL: srv.URL})
	if err != nil {
		t.Fatalf("New with upstream down: %v", err)
	}
	_, err = r.HeadManifest(context.Background(), repo(t, "library/alpine"), byTag(t, "3.19"), nil)
	if e := asError(t, err); e.Status != 0 || e.Kind != regerr.Unavailable {
		t.Fatalf("want an unreachable Unavailable error, got %#v", e)
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
			alpine := repo(t, "library/alpine")

			desc, err := r.HeadManifest(ctx, alpine, byTag(t, "3.19"), nil)
			if err != nil {
				t.Fatal(err)
			}
			want := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: int64(len(testManifest))}
			if desc.MediaType != want.MediaType || desc.Digest != want.Digest || desc.Size != want.Size {
				t.Errorf("HeadManifest = %+v, want %+v", desc, want)
			}

			mTag, err := r.ManifestByTag(ctx, alpine, tag(t, "3.19"), nil)
			if err != nil {
				t.Fatal(err)
			}
			mDigest, err := r.Manifest(ctx, alpine, d, AnySource)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range []Manifest{mTag, mDigest} {
				if !bytes.Equal(m.Data, []byte(testManifest)) || m.Digest != d || m.Size != int64(len(testManifest)) || m.MediaType != want.MediaType || m.Source != SourceOrigin {
					t.Errorf("manifest = %+v from %q", m.Descriptor, m.Source)
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
	alpine := repo(t, "library/alpine")
	_, err := r.HeadManifest(context.Background(), alpine, byTag(t, "missing"), nil)
	// A HEAD's 404 has no body: the status alone says "not found".
	if e := asError(t, err); e.Kind != regerr.NotFound || e.Status != http.StatusNotFound {
		t.Fatalf("want a 404 NotFound, got %v", err)
	}
	if got := f.count("GET /v2/library/alpine/manifests/missing"); got != 0 {
		t.Errorf("a failed HEAD turned into %d GETs", got)
	}
	// Digest header absent: Digest is empty, not invented.
	f.mu.Lock()
	f.manifests["library/alpine:nodigest"] = fakeManifest{mediaType: ocispec.MediaTypeImageIndex, data: []byte(testManifest), header: "-"}
	f.mu.Unlock()
	desc, err := r.HeadManifest(context.Background(), alpine, byTag(t, "nodigest"), []string{ocispec.MediaTypeImageIndex})
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != "" || desc.MediaType != ocispec.MediaTypeImageIndex {
		t.Errorf("HeadManifest without digest header = %+v", desc)
	}
	// By digest, a header naming another digest is wrong content.
	d := digest.FromBytes([]byte(testManifest))
	f.mu.Lock()
	f.manifests["library/alpine@"+d.String()] = fakeManifest{mediaType: ocispec.MediaTypeImageManifest, data: []byte(testManifest), header: digest.FromString("other").String()}
	f.mu.Unlock()
	if _, err := r.HeadManifest(context.Background(), alpine, byDigest(d), nil); !regerr.Is(err, regerr.BadContent) {
		t.Errorf("HEAD by digest with another digest's header: %v, want BadContent", err)
	}
}

func TestGetManifestVerifies(t *testing.T) {
	good := []byte(testManifest)
	other := []byte(`{"schemaVersion":2}`)
	big := bytes.Repeat([]byte(" "), MaxManifestSize+1)
	tests := []struct {
		name     string
		stored   fakeManifest
		byDigest bool
		kind     regerr.Kind
	}{
		{"tag, header matches", fakeManifest{data: good}, false, 0},
		{"tag, no header", fakeManifest{data: good, header: "-"}, false, 0},
		{"tag, header lies", fakeManifest{data: good, header: digest.FromBytes(other).String()}, false, regerr.BadContent},
		{"tag, header garbled", fakeManifest{data: good, header: "sha256:nothex"}, false, regerr.BadContent},
		{"digest, body differs", fakeManifest{data: other, header: "-"}, true, regerr.BadContent},
		{"digest, body matches", fakeManifest{data: good}, true, 0},
		{"too big", fakeManifest{data: big, header: "-"}, false, regerr.TooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeRegistry(t, "anon")
			r := newTestRegistry(t, f, nil)
			want := digest.FromBytes(good)
			tt.stored.mediaType = ocispec.MediaTypeImageManifest
			key := "library/x:t"
			if tt.byDigest {
				key = "library/x@" + want.String()
			}
			f.mu.Lock()
			f.manifests[key] = tt.stored
			f.mu.Unlock()

			var m Manifest
			var err error
			if tt.byDigest {
				m, err = r.Manifest(context.Background(), repo(t, "library/x"), want, AnySource)
			} else {
				m, err = r.ManifestByTag(context.Background(), repo(t, "library/x"), tag(t, "t"), nil)
			}
			if tt.kind == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if m.Digest != want {
					t.Errorf("Digest = %s, want %s", m.Digest, want)
				}
				return
			}
			if !regerr.Is(err, tt.kind) {
				t.Fatalf("want %s, got %v", tt.kind, err)
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
			serve := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				cdnAuth = append(cdnAuth, r.Header.Get("Authorization"))
				mu.Unlock()
				w.Write(blob)
			})
			cdn := listenOn(t, "127.0.0.2:0", serve)
			// Same IP, other port: net/http would keep the header here.
			samehost := httptest.NewServer(serve)
			t.Cleanup(samehost.Close)

			r := newTestRegistry(t, f, credsFor(f))
			for _, target := range []string{cdn.URL, samehost.URL} {
				f.mu.Lock()
				f.blobBaseURL = target
				f.mu.Unlock()
				b, err := r.Blob(context.Background(), repo(t, "library/alpine"), d, int64(len(blob)))
				if err != nil {
					t.Fatal(err)
				}
				got, err := readBlob(b)
				if err != nil || !bytes.Equal(got, blob) {
					t.Errorf("body = %q, err %v", got, err)
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
	alpine := repo(t, "library/alpine")

	desc, err := r.StatBlob(ctx, alpine, d)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != d || desc.Size != int64(len(blob)) {
		t.Errorf("StatBlob = %+v", desc)
	}
	for _, size := range []int64{int64(len(blob)), -1} {
		b, err := r.Blob(ctx, alpine, d, size)
		if err != nil {
			t.Fatal(err)
		}
		got, err := readBlob(b)
		// Size is the Content-Length when the caller knew none.
		if err != nil || !bytes.Equal(got, blob) || b.Size != int64(len(blob)) || b.Source != SourceOrigin {
			t.Errorf("Blob(size %d) = %q size %d source %q, err %v", size, got, b.Size, b.Source, err)
		}
	}

	missing := digest.FromString("nope")
	if _, err := r.StatBlob(ctx, alpine, missing); !regerr.Is(err, regerr.NotFound) {
		t.Errorf("StatBlob missing: %v", err)
	}
	_, err = r.Blob(ctx, alpine, missing, -1)
	if e := asError(t, err); e.Code != "BLOB_UNKNOWN" || e.Kind != regerr.NotFound {
		t.Errorf("Blob missing: %v", err)
	}
}

func TestTokenRefreshAfterExpiry(t *testing.T) {
	f := newFakeRegistry(t, "bearer")
	f.putManifest("library/alpine", "3.19", ocispec.MediaTypeImageManifest, []byte(testManifest))
	r := newTestRegistry(t, f, nil)
	ctx := context.Background()
	if _, err := r.HeadManifest(ctx, repo(t, "library/alpine"), byTag(t, "3.19"), nil); err != nil {
		t.Fatal(err)
	}
	f.expireTokens()
	if _, err := r.ManifestByTag(ctx, repo(t, "library/alpine"), tag(t, "3.19"), nil); err != nil {
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
				Auth:   credsForUser(f.user, password),
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			})
			if err != nil {
				t.Fatal(err)
			}
			_, err = r.ManifestByTag(context.Background(), repo(t, "library/alpine"), tag(t, "3.19"), nil)
			if e := asError(t, err); e.Status != http.StatusUnauthorized || e.Kind != regerr.Denied {
				t.Fatalf("want a 401 Denied error, got %#v", e)
			}
			basic := base64.StdEncoding.EncodeToString([]byte(f.user + ":" + password))
			for _, s := range []string{err.Error(), asError(t, err).ClientMessage(), logs.String()} {
				if strings.Contains(s, password) || strings.Contains(s, basic) {
					t.Errorf("credentials leaked: %s", s)
				}
			}
			if regerr.Transient(err) {
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
			_, err := r.HeadManifest(context.Background(), repo(t, "library/alpine"), byTag(t, "3.19"), nil)
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
	_, err := r.HeadManifest(ctx, repo(t, "library/alpine"), byTag(t, "3.19"), nil)
	if e := asError(t, err); e.Status != http.StatusServiceUnavailable || e.Kind != regerr.Unavailable {
		t.Fatalf("want a 503 Unavailable error, got %#v", e)
	}
	mu.Lock()
	down = false
	mu.Unlock()
	if _, err := r.HeadManifest(ctx, repo(t, "library/alpine"), byTag(t, "3.19"), nil); err != nil {
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

// TestList: tags lists and referrers come from the origin with regcache's
// own credentials and only the query parameters their API defines.
func TestList(t *testing.T) {
	f := newFakeRegistry(t, "bearer")
	subject := digest.FromString("subject")
	const link = `</v2/library/alpine/tags/list?last=b&n=2>; rel="next"`
	index := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`
	type seen struct {
		auth, cookie, accept string
		query                url.Values
	}
	var mu sync.Mutex
	got := map[string]seen{}
	f.hook = func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") == "" {
			return false
		}
		mu.Lock()
		got[r.URL.Path] = seen{r.Header.Get("Authorization"), r.Header.Get("Cookie"), r.Header.Get("Accept"), r.URL.Query()}
		mu.Unlock()
		switch {
		case strings.HasSuffix(r.URL.Path, "/tags/list"):
			w.Header().Set("Link", link)
		case strings.HasSuffix(r.URL.Path, "/referrers/"+subject.String()):
			w.Header().Set("Content-Type", ocispec.MediaTypeImageIndex)
			io.WriteString(w, index)
			return true
		}
		return false
	}
	r := newTestRegistry(t, f, nil)
	ctx := context.Background()
	alpine := repo(t, "library/alpine")

	l, err := r.List(ctx, alpine, ListRequest{Kind: Tags, Query: url.Values{"n": {"2"}, "last": {"a"}, "evil": {"1"}}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(l.Body), `"tags":["a","b"]`) || l.ContentType != "application/json" || l.Link != link {
		t.Errorf("tags list = %s, %q, Link %q", l.Body, l.ContentType, l.Link)
	}
	tags := got["/v2/library/alpine/tags/list"]
	// A client's headers never reach the upstream: List takes none, and
	// the upstream sees regcache's own token.
	if !strings.HasPrefix(tags.auth, "Bearer tok-") || tags.cookie != "" {
		t.Errorf("upstream saw Authorization %q Cookie %q; want regcache's token only", tags.auth, tags.cookie)
	}
	if want := (url.Values{"n": {"2"}, "last": {"a"}}); tags.query.Encode() != want.Encode() {
		t.Errorf("tags query %v, want %v", tags.query, want)
	}

	l, err = r.List(ctx, alpine, ListRequest{Kind: Referrers, Digest: subject, Query: url.Values{"artifactType": {"application/x"}, "n": {"1"}}})
	if err != nil {
		t.Fatal(err)
	}
	if string(l.Body) != index || l.ContentType != ocispec.MediaTypeImageIndex {
		t.Errorf("referrers = %s, %q", l.Body, l.ContentType)
	}
	refs := got["/v2/library/alpine/referrers/"+subject.String()]
	if refs.accept != ocispec.MediaTypeImageIndex || refs.query.Encode() != "artifactType=application%2Fx" {
		t.Errorf("referrers request: Accept %q, query %v", refs.accept, refs.query)
	}

	_, err = r.List(ctx, alpine, ListRequest{Kind: Referrers, Digest: digest.FromString("none")})
	if !regerr.Is(err, regerr.NotFound) {
		t.Errorf("want NotFound for a 404, got %v", err)
	}
}

// TestListTooLarge: a list over MaxListSize is refused whole, never cut
// into invalid JSON, whether or not the upstream said its length.
func TestListTooLarge(t *testing.T) {
	for _, announced := range []bool{false, true} {
		t.Run(fmt.Sprintf("Content-Length sent: %v", announced), func(t *testing.T) {
			f := newFakeRegistry(t, "anon")
			chunk := bytes.Repeat([]byte(" "), 64<<10)
			f.hook = func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasSuffix(r.URL.Path, "/tags/list") {
					return false
				}
				w.Header().Set("Content-Type", "application/json")
				if announced {
					w.Header().Set("Content-Length", fmt.Sprint(MaxListSize+1))
				}
				for n := MaxListSize + 1; n > 0; n -= len(chunk) {
					if _, err := w.Write(chunk[:min(n, len(chunk))]); err != nil {
						return true
					}
				}
				return true
			}
			r := newTestRegistry(t, f, nil)
			l, err := r.List(context.Background(), repo(t, "library/alpine"), ListRequest{Kind: Tags})
			if !regerr.Is(err, regerr.TooLarge) || l.Body != nil {
				t.Errorf("got %d bytes, err %v; want TooLarge and no body", len(l.Body), err)
			}
		})
	}
}

// TestReadLimited: the limit that bounds manifests and lists is exact,
// with or without a Content-Length, and an announced excess is refused
// before the body is read.
func TestReadLimited(t *testing.T) {
	const limit = 10
	tests := []struct {
		name          string
		body          string
		contentLength int64
		ok            bool
	}{
		{"at the limit", "0123456789", -1, true},
		{"at the limit, announced", "0123456789", 10, true},
		{"one over", "0123456789A", -1, false},
		{"announced over, body not read", "", 11, false},
		{"empty", "", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := &countingReader{r: strings.NewReader(tt.body)}
			resp := &http.Response{ContentLength: tt.contentLength, Body: io.NopCloser(body)}
			data, err := readLimited(context.Background(), call{}, resp, limit, redactor{})
			if tt.ok {
				if err != nil || string(data) != tt.body {
					t.Errorf("got %q, %v; want the whole body", data, err)
				}
				return
			}
			if !regerr.Is(err, regerr.TooLarge) || data != nil {
				t.Errorf("got %q, %v; want TooLarge and nothing", data, err)
			}
			if body.n > limit+1 {
				t.Errorf("read %d bytes; want at most one past the limit", body.n)
			}
		})
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// TestDigestAlgorithmChecked: names are typed (ref.Repo and ref.Tag cannot
// hold an invalid name, see ref_test.go), but a digest.Digest is a string;
// one whose algorithm cannot be verified is refused before any request.
func TestDigestAlgorithmChecked(t *testing.T) {
	f := newFakeRegistry(t, "anon")
	r := newTestRegistry(t, f, nil)
	_, err := r.Blob(context.Background(), repo(t, "library/alpine"), digest.Digest("md5:"+strings.Repeat("0", 32)), -1)
	if !regerr.Is(err, regerr.Invalid) {
		t.Errorf("unsupported algorithm: %v, want Invalid", err)
	}
	if got := f.requests(); len(got) != 0 {
		t.Errorf("an unverifiable digest reached the upstream: %v", got)
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
			_, err := r.Blob(context.Background(), repo(t, "library/alpine"), d, 1)
			e := asError(t, err)
			if strings.Contains(e.Error(), "SECRETSIG") || strings.Contains(e.ClientMessage(), "SECRETSIG") {
				t.Errorf("error leaks the CDN signature: %v", err)
			}
		})
	}
}

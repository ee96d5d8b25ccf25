package testhub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
)

// response is a fully read HTTP response; err is set when the connection
// failed, before or during the body.
type response struct {
	status int
	hdr    http.Header
	body   []byte
	err    error
}

func newClient() *http.Client {
	return &http.Client{
		Transport:     &http.Transport{DisableCompression: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func do(t *testing.T, method, u string, hdr http.Header) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	// Like every real client; without it distribution 2.8 may down-convert.
	if strings.Contains(u, "/manifests/") && req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", manifestAccept())
	}
	resp, err := newClient().Do(req)
	if err != nil {
		return response{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, hdr: resp.Header, body: body, err: err}
}

// token fetches a token from the hub's realm; user "" is anonymous.
func token(t *testing.T, h *Hub, scope, user, pass string) (string, response) {
	t.Helper()
	q := url.Values{"service": {h.opts.Service}}
	if scope != "" {
		q.Set("scope", scope)
	}
	hdr := http.Header{}
	if user != "" {
		req, _ := http.NewRequest(http.MethodGet, "/", nil)
		req.SetBasicAuth(user, pass)
		hdr.Set("Authorization", req.Header.Get("Authorization"))
	}
	r := do(t, http.MethodGet, h.Realm+"?"+q.Encode(), hdr)
	var body struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
		IssuedAt    string `json:"issued_at"`
	}
	if r.status == http.StatusOK {
		if err := json.Unmarshal(r.body, &body); err != nil {
			t.Fatalf("token body %q: %v", r.body, err)
		}
		if body.Token == "" || body.Token != body.AccessToken || body.ExpiresIn <= 0 || body.IssuedAt == "" {
			t.Fatalf("token body incomplete: %s", r.body)
		}
	}
	return body.Token, r
}

// manifestAccept is the Accept header of a client that takes every
// current manifest type.
func manifestAccept() string {
	return strings.Join([]string{
		"application/vnd.docker.distribution.manifest.v2+json",
		"application/vnd.docker.distribution.manifest.list.v2+json",
		"application/vnd.oci.image.manifest.v1+json",
		"application/vnd.oci.image.index.v1+json",
	}, ", ")
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

func pullScope(repo string) string { return "repository:" + repo + ":pull" }

func TestTokenFlow(t *testing.T) {
	reg := StartRegistry(t)
	img := reg.PushImage(t, "library/alpine", "3.19", ImageOptions{})
	hub := NewHub(t, reg, Options{Users: map[string]string{"alice": "s3cret"}, TokenTTL: 90 * time.Second})
	manifest := hub.URL + "/v2/library/alpine/manifests/3.19"

	t.Run("challenges", func(t *testing.T) {
		for _, tc := range []struct {
			url, want string
		}{
			{hub.URL + "/v2/", `Bearer realm="` + hub.URL + `/token",service="registry.docker.io"`},
			{manifest, `Bearer realm="` + hub.URL + `/token",service="registry.docker.io",scope="repository:library/alpine:pull"`},
		} {
			r := do(t, http.MethodGet, tc.url, nil)
			if r.status != http.StatusUnauthorized || r.hdr.Get("WWW-Authenticate") != tc.want {
				t.Errorf("GET %s = %d %q, want 401 %q", tc.url, r.status, r.hdr.Get("WWW-Authenticate"), tc.want)
			}
			if r.hdr.Get("Docker-Distribution-API-Version") != "registry/2.0" {
				t.Errorf("GET %s lacks Docker-Distribution-API-Version", tc.url)
			}
		}
	})

	tests := []struct {
		name            string
		user, pass      string
		scopeRepo       string
		expire          bool
		wantTokenStatus int
		wantStatus      int
	}{
		{"anonymous", "", "", "library/alpine", false, 200, 200},
		{"good credentials", "alice", "s3cret", "library/alpine", false, 200, 200},
		{"bad password", "alice", "nope", "library/alpine", false, 401, 0},
		{"unknown user", "bob", "s3cret", "library/alpine", false, 401, 0},
		{"token for another repo", "", "", "library/busybox", false, 200, 401},
		{"expired token", "alice", "s3cret", "library/alpine", true, 200, 401},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, tr := token(t, hub, pullScope(tc.scopeRepo), tc.user, tc.pass)
			if tr.status != tc.wantTokenStatus {
				t.Fatalf("token status %d, want %d (%s)", tr.status, tc.wantTokenStatus, tr.body)
			}
			if tr.status != http.StatusOK {
				var body struct{ Details string }
				if json.Unmarshal(tr.body, &body) != nil || body.Details == "" {
					t.Errorf("token error body %q lacks details", tr.body)
				}
				return
			}
			if tc.expire {
				hub.ExpireTokens()
			}
			r := do(t, http.MethodGet, manifest, bearer(tok))
			if r.status != tc.wantStatus {
				t.Fatalf("manifest GET = %d, want %d", r.status, tc.wantStatus)
			}
			if r.status == http.StatusUnauthorized && !strings.Contains(r.hdr.Get("WWW-Authenticate"), `error="invalid_token"`) {
				t.Errorf("rejected token challenge %q lacks error=invalid_token", r.hdr.Get("WWW-Authenticate"))
			}
			if r.status == http.StatusOK && digest.FromBytes(r.body) != img.Digest {
				t.Errorf("manifest body digest %s, want %s", digest.FromBytes(r.body), img.Digest)
			}
			if ping := do(t, http.MethodGet, hub.URL+"/v2/", bearer(tok)); r.status == http.StatusOK && ping.status != http.StatusOK {
				t.Errorf("ping with valid token = %d", ping.status)
			}
		})
	}

	t.Run("expires_in", func(t *testing.T) {
		_, r := token(t, hub, pullScope("library/alpine"), "", "")
		var body struct {
			ExpiresIn int `json:"expires_in"`
		}
		_ = json.Unmarshal(r.body, &body)
		if body.ExpiresIn != 90 {
			t.Errorf("expires_in = %d, want 90", body.ExpiresIn)
		}
	})

	t.Run("oauth2 POST", func(t *testing.T) {
		for _, tc := range []struct {
			form url.Values
			want int
		}{
			{url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"s3cret"}, "access_type": {"offline"}}, 200},
			{url.Values{"grant_type": {"password"}, "username": {"alice"}, "password": {"bad"}}, 401},
			{url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"bogus"}}, 401},
		} {
			tc.form.Set("service", "registry.docker.io")
			tc.form.Set("scope", pullScope("library/alpine"))
			resp, err := newClient().PostForm(hub.Realm, tc.form)
			if err != nil {
				t.Fatal(err)
			}
			var body struct {
				AccessToken  string `json:"access_token"`
				RefreshToken string `json:"refresh_token"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("POST %v = %d, want %d", tc.form, resp.StatusCode, tc.want)
			}
			if tc.want == 200 {
				if r := do(t, http.MethodHead, manifest, bearer(body.AccessToken)); r.status != 200 || body.RefreshToken == "" {
					t.Errorf("oauth token: HEAD = %d, refresh token %q", r.status, body.RefreshToken)
				}
			}
		}
	})
}

func TestBasicAuthMode(t *testing.T) {
	reg := StartRegistry(t)
	reg.PushImage(t, "team/app", "v1", ImageOptions{})
	hub := NewHub(t, reg, Options{BasicAuth: true, Users: map[string]string{"ci": "pw"}, UserLimit: 10})
	for _, tc := range []struct {
		name       string
		user, pass string
		want       int
	}{
		{"no credentials", "", "", 401},
		{"wrong password", "ci", "x", 401},
		{"good", "ci", "pw", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, hub.URL+"/v2/team/app/manifests/v1", nil)
			if tc.user != "" {
				req.SetBasicAuth(tc.user, tc.pass)
			}
			resp, err := newClient().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.want == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic realm=") {
				t.Errorf("challenge %q, want Basic", resp.Header.Get("WWW-Authenticate"))
			}
			if tc.want == 200 && resp.Header.Get("Docker-RateLimit-Source") != "ci" {
				t.Errorf("ratelimit source %q, want ci", resp.Header.Get("Docker-RateLimit-Source"))
			}
		})
	}
}

// TestGGCRThroughHub pulls through the hub with a real client, exercising
// the challenge, token and pass-through of every header ggcr relies on.
func TestGGCRThroughHub(t *testing.T) {
	reg := StartRegistry(t)
	idx := reg.PushIndex(t, "library/node", "21", []string{"linux/amd64", "linux/arm64"}, false)
	for _, tc := range []struct {
		name     string
		opts     Options
		auth     authn.Authenticator
		identity string
	}{
		{"anonymous", Options{AnonymousLimit: 100}, authn.Anonymous, ""},
		{"user", Options{UserLimit: 50, Users: map[string]string{"alice": "pw"}}, &authn.Basic{Username: "alice", Password: "pw"}, "alice"},
		{"redirect to CDN", Options{BlobRedirect: true, CDNHostname: "localhost"}, authn.Anonymous, ""},
		{"basic registry", Options{BasicAuth: true, Users: map[string]string{"alice": "pw"}}, &authn.Basic{Username: "alice", Password: "pw"}, "alice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hub := NewHub(t, reg, tc.opts)
			ref, err := name.ParseReference(hub.Host+"/library/node:21", name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			before := hub.Remaining(tc.identity)
			img, err := remote.Image(ref, remote.WithContext(t.Context()), remote.WithAuth(tc.auth))
			if err != nil {
				t.Fatalf("remote.Image: %v", err)
			}
			if d, _ := img.Digest(); d.String() != idx.Children["linux/amd64"].Digest.String() {
				t.Errorf("resolved %s, want the linux/amd64 child", d)
			}
			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range layers {
				checkTar(t, l)
			}
			c := hub.Counts()
			if c.ManifestGETs != 2 || c.ManifestGETsByRepo["library/node"] != 2 {
				t.Errorf("ManifestGETs = %d (%v), want 2 (index + child)", c.ManifestGETs, c.ManifestGETsByRepo)
			}
			if before >= 0 && hub.Remaining(tc.identity) != before-2 {
				t.Errorf("Remaining(%q) went %d -> %d, want -2", tc.identity, before, hub.Remaining(tc.identity))
			}
			if c.CDNAuthHeaders != 0 {
				t.Errorf("CDN saw %d Authorization headers", c.CDNAuthHeaders)
			}
			if l := idx.Children["linux/amd64"].Layers[0]; c.BlobGETs[l] != 1 {
				t.Errorf("BlobGETs[%s] = %d, want 1", l, c.BlobGETs[l])
			}
		})
	}
}

func TestRateLimit(t *testing.T) {
	reg := StartRegistry(t)
	img := reg.PushImage(t, "library/alpine", "3.19", ImageOptions{})
	hub := NewHub(t, reg, Options{AnonymousLimit: 2, UserLimit: 5, Window: time.Hour, Users: map[string]string{"alice": "pw"}})
	anon, _ := token(t, hub, pullScope("library/alpine"), "", "")
	alice, _ := token(t, hub, pullScope("library/alpine"), "alice", "pw")
	base := hub.URL + "/v2/library/alpine/"

	steps := []struct {
		name          string
		method, path  string
		tok           string
		wantStatus    int
		wantRemaining string // "" = no rate-limit headers expected
		wantSource    string
	}{
		{"HEAD is free", http.MethodHead, "manifests/3.19", anon, 200, "2;w=3600", "127.0.0.1"},
		{"GET counts", http.MethodGet, "manifests/3.19", anon, 200, "1;w=3600", "127.0.0.1"},
		{"blob GET is free", http.MethodGet, "blobs/" + img.Layers[0].String(), anon, 200, "", ""},
		{"GET by digest counts", http.MethodGet, "manifests/" + img.Digest.String(), anon, 200, "0;w=3600", "127.0.0.1"},
		{"HEAD still answers when exhausted", http.MethodHead, "manifests/3.19", anon, 200, "0;w=3600", "127.0.0.1"},
		{"GET refused when exhausted", http.MethodGet, "manifests/3.19", anon, 429, "0;w=3600", "127.0.0.1"},
		{"users have their own budget", http.MethodGet, "manifests/3.19", alice, 200, "4;w=3600", "alice"},
		{"failed GET is not counted", http.MethodGet, "manifests/nosuchtag", alice, 404, "4;w=3600", "alice"},
	}
	for _, s := range steps {
		r := do(t, s.method, base+s.path, bearer(s.tok))
		if r.status != s.wantStatus {
			t.Fatalf("%s: status %d, want %d (%s)", s.name, r.status, s.wantStatus, r.body)
		}
		if got := r.hdr.Get("RateLimit-Remaining"); got != s.wantRemaining {
			t.Errorf("%s: ratelimit-remaining %q, want %q", s.name, got, s.wantRemaining)
		}
		if s.wantRemaining != "" {
			wantLimit := "2;w=3600"
			if s.tok == alice {
				wantLimit = "5;w=3600"
			}
			if got := r.hdr.Get("RateLimit-Limit"); got != wantLimit {
				t.Errorf("%s: ratelimit-limit %q, want %q", s.name, got, wantLimit)
			}
		}
		if got := r.hdr.Get("Docker-RateLimit-Source"); got != s.wantSource {
			t.Errorf("%s: docker-ratelimit-source %q, want %q", s.name, got, s.wantSource)
		}
		if r.status == http.StatusTooManyRequests {
			checkTooManyRequests(t, r)
		}
	}

	c := hub.Counts()
	if c.ManifestGETs != 3 || c.ManifestHEADs != 2 || c.RateLimited != 1 || c.ManifestGETsByRepo["library/alpine"] != 3 {
		t.Errorf("counts = %+v, want 3 GETs, 2 HEADs, 1 rate limited", c)
	}
	if hub.Remaining("") != 0 || hub.Remaining("alice") != 4 {
		t.Errorf("Remaining = %d anonymous, %d alice; want 0, 4", hub.Remaining(""), hub.Remaining("alice"))
	}
	hub.ResetLimits()
	if r := do(t, http.MethodGet, base+"manifests/3.19", bearer(anon)); r.status != 200 || r.hdr.Get("RateLimit-Remaining") != "1;w=3600" {
		t.Errorf("after ResetLimits: %d %q", r.status, r.hdr.Get("RateLimit-Remaining"))
	}

	t.Run("no limit, no headers", func(t *testing.T) {
		open := NewHub(t, reg, Options{})
		tok, _ := token(t, open, pullScope("library/alpine"), "", "")
		for range 3 {
			r := do(t, http.MethodGet, open.URL+"/v2/library/alpine/manifests/3.19", bearer(tok))
			if r.status != 200 || r.hdr.Get("RateLimit-Limit") != "" || r.hdr.Get("RateLimit-Remaining") != "" {
				t.Fatalf("status %d, headers %v", r.status, r.hdr)
			}
		}
		if open.Remaining("") != -1 || open.Counts().ManifestGETs != 3 {
			t.Errorf("Remaining = %d, ManifestGETs = %d", open.Remaining(""), open.Counts().ManifestGETs)
		}
	})
}

func checkTooManyRequests(t *testing.T, r response) {
	t.Helper()
	var body struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.Unmarshal(r.body, &body); err != nil || len(body.Errors) != 1 || body.Errors[0].Code != "TOOMANYREQUESTS" ||
		!strings.HasPrefix(body.Errors[0].Message, "You have reached your pull rate limit.") {
		t.Errorf("429 body %q", r.body)
	}
	if s, err := strconv.Atoi(r.hdr.Get("Retry-After")); err != nil || s <= 0 {
		t.Errorf("429 Retry-After %q", r.hdr.Get("Retry-After"))
	}
}

func TestFaults(t *testing.T) {
	reg := StartRegistry(t)
	img := reg.PushImage(t, "library/alpine", "3.19", ImageOptions{LayerSize: 8 << 10})
	blobPath := "/v2/library/alpine/blobs/" + img.Layers[0].String()
	manifestPath := "/v2/library/alpine/manifests/3.19"

	type check func(t *testing.T, r response, want digest.Digest, wantLen int)
	ok := func(t *testing.T, r response, want digest.Digest, _ int) {
		if r.err != nil || r.status != 200 || digest.FromBytes(r.body) != want {
			t.Errorf("want intact 200: status %d, err %v", r.status, r.err)
		}
	}
	status := func(code int) check {
		return func(t *testing.T, r response, _ digest.Digest, _ int) {
			if r.err != nil || r.status != code {
				t.Errorf("status %d (err %v), want %d", r.status, r.err, code)
			}
			if code == 429 {
				checkTooManyRequests(t, r)
			}
		}
	}
	dropped := func(t *testing.T, r response, _ digest.Digest, _ int) {
		if r.err == nil {
			t.Errorf("want a connection error, got status %d", r.status)
		}
	}
	midBody := func(t *testing.T, r response, _ digest.Digest, wantLen int) {
		if r.status != 200 || !errors.Is(r.err, io.ErrUnexpectedEOF) || len(r.body) != wantLen/2 {
			t.Errorf("want 200 with %d of %d bytes then unexpected EOF; got %d, %d bytes, err %v", wantLen/2, wantLen, r.status, len(r.body), r.err)
		}
	}
	corrupt := func(t *testing.T, r response, want digest.Digest, wantLen int) {
		if r.err != nil || r.status != 200 || len(r.body) != wantLen || digest.FromBytes(r.body) == want {
			t.Errorf("want 200 with %d corrupted bytes; got %d, %d bytes, err %v", wantLen, r.status, len(r.body), r.err)
		}
		if r.hdr.Get("Docker-Content-Digest") != want.String() {
			t.Errorf("Docker-Content-Digest changed to %q", r.hdr.Get("Docker-Content-Digest"))
		}
	}

	tests := []struct {
		name          string
		redirect      bool
		fault         Fault
		scope         Scope
		manifest      check
		blob          check
		ping, tokenOK int
	}{
		{"none", false, FaultNone, ScopeAll, ok, ok, 401, 200},
		{"429 everywhere", false, Fault429, ScopeAll, status(429), status(429), 429, 429},
		{"500 on manifests", false, Fault500, ScopeManifests, status(500), ok, 401, 200},
		{"500 on blobs", false, Fault500, ScopeBlobs, ok, status(500), 401, 200},
		{"drop everywhere", false, FaultDrop, ScopeAll, dropped, dropped, -1, -1},
		{"drop blobs", false, FaultDrop, ScopeBlobs, ok, dropped, 401, 200},
		{"drop mid-body manifests", false, FaultDropMidBody, ScopeManifests, midBody, ok, 401, 200},
		{"drop mid-body blobs", false, FaultDropMidBody, ScopeBlobs, ok, midBody, 401, 200},
		{"corrupt everywhere", false, FaultCorrupt, ScopeAll, corrupt, corrupt, 401, 200},
		{"corrupt blobs at the CDN", true, FaultCorrupt, ScopeBlobs, ok, corrupt, 401, 200},
		{"drop mid-body at the CDN", true, FaultDropMidBody, ScopeBlobs, ok, midBody, 401, 200},
		{"500 on redirected blobs", true, Fault500, ScopeBlobs, ok, status(500), 401, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hub := NewHub(t, reg, Options{BlobRedirect: tc.redirect})
			tok, _ := token(t, hub, pullScope("library/alpine"), "", "")
			hub.SetFaultFor(tc.fault, tc.scope)

			tc.manifest(t, do(t, http.MethodGet, hub.URL+manifestPath, bearer(tok)), img.Digest, len(img.Manifest))
			r := do(t, http.MethodGet, hub.URL+blobPath, bearer(tok))
			if tc.redirect && r.status == http.StatusTemporaryRedirect {
				r = do(t, http.MethodGet, r.hdr.Get("Location"), nil)
			}
			tc.blob(t, r, img.Layers[0], int(img.Size))

			ping := do(t, http.MethodGet, hub.URL+"/v2/", nil)
			if (tc.ping == -1) != (ping.err != nil) || (ping.err == nil && ping.status != tc.ping) {
				t.Errorf("ping = %d (err %v), want %d", ping.status, ping.err, tc.ping)
			}
			_, tr := token(t, hub, pullScope("library/alpine"), "", "")
			if (tc.tokenOK == -1) != (tr.err != nil) || (tr.err == nil && tr.status != tc.tokenOK) {
				t.Errorf("token = %d (err %v), want %d", tr.status, tr.err, tc.tokenOK)
			}
			if c := hub.Counts(); c.ManifestGETs > 1 || (tc.fault == FaultNone && c.ManifestGETs != 1) {
				t.Errorf("ManifestGETs = %d", c.ManifestGETs)
			}
		})
	}

	t.Run("SetFaultN", func(t *testing.T) {
		hub := NewHub(t, reg, Options{})
		tok, _ := token(t, hub, pullScope("library/alpine"), "", "")
		hub.SetFaultN(Fault500, ScopeManifests, 2)
		var got []int
		for range 3 {
			got = append(got, do(t, http.MethodGet, hub.URL+manifestPath, bearer(tok)).status)
		}
		if got[0] != 500 || got[1] != 500 || got[2] != 200 {
			t.Errorf("statuses %v, want [500 500 200]", got)
		}
		if c := hub.Counts(); c.Faults != 2 || c.ManifestGETs != 1 {
			t.Errorf("Faults = %d, ManifestGETs = %d", c.Faults, c.ManifestGETs)
		}

		// A HEAD has no body to corrupt and must leave the budget to the GET.
		hub.SetFaultN(FaultCorrupt, ScopeManifests, 1)
		var digests []digest.Digest
		if r := do(t, http.MethodHead, hub.URL+manifestPath, bearer(tok)); r.status != 200 {
			t.Fatalf("HEAD = %d", r.status)
		}
		for range 2 {
			digests = append(digests, digest.FromBytes(do(t, http.MethodGet, hub.URL+manifestPath, bearer(tok)).body))
		}
		if digests[0] == img.Digest || digests[1] != img.Digest {
			t.Errorf("GET digests %v: want first corrupted, second intact (%s)", digests, img.Digest)
		}
	})
}

func TestBlobRedirect(t *testing.T) {
	reg := StartRegistry(t)
	img := reg.PushImage(t, "library/alpine", "3.19", ImageOptions{LayerSize: 32 << 10})
	hub := NewHub(t, reg, Options{BlobRedirect: true})
	tok, _ := token(t, hub, pullScope("library/alpine"), "", "")
	blob := hub.URL + "/v2/library/alpine/blobs/" + img.Layers[0].String()

	r := do(t, http.MethodGet, blob, bearer(tok))
	loc, err := url.Parse(r.hdr.Get("Location"))
	if r.status != http.StatusTemporaryRedirect || err != nil || loc.Host != hub.CDNHost || !strings.HasPrefix(loc.Host, "127.0.0.2:") {
		t.Fatalf("blob GET = %d Location %q, want 307 to %s", r.status, r.hdr.Get("Location"), hub.CDNHost)
	}
	if r := do(t, http.MethodHead, blob, bearer(tok)); r.status != 200 || r.hdr.Get("Content-Length") != strconv.FormatInt(img.Size, 10) {
		t.Errorf("blob HEAD = %d, Content-Length %q", r.status, r.hdr.Get("Content-Length"))
	}
	if r := do(t, http.MethodGet, hub.URL+"/v2/library/alpine/blobs/sha256:"+strings.Repeat("0", 64), bearer(tok)); r.status != 404 {
		t.Errorf("unknown blob = %d, want 404 from the registry, not a redirect", r.status)
	}

	// A well-behaved client follows without credentials: Go's client drops
	// Authorization when the host changes.
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, blob, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || digest.FromBytes(body) != img.Layers[0] {
		t.Fatalf("followed redirect: %d, digest %s", resp.StatusCode, digest.FromBytes(body))
	}
	c := hub.Counts()
	if c.CDNAuthHeaders != 0 || c.BlobGETs[img.Layers[0]] != 2 || c.BlobBytes != img.Size || c.CDNRequests != 1 {
		t.Errorf("counts %+v", c)
	}
	tr := hub.Transfers()
	if len(tr) != 1 || !tr[0].CDN || tr[0].Digest != img.Layers[0] || tr[0].Bytes != img.Size || tr[0].End.Before(tr[0].Start) {
		t.Errorf("transfers %+v", tr)
	}

	// A leaking client is caught.
	if r := do(t, http.MethodGet, loc.String(), bearer(tok)); r.status != 200 {
		t.Fatalf("CDN GET = %d", r.status)
	}
	if n := hub.Counts().CDNAuthHeaders; n != 1 {
		t.Errorf("CDNAuthHeaders = %d, want 1", n)
	}
	hub.ResetCounts()
	if c := hub.Counts(); c.CDNAuthHeaders != 0 || len(c.BlobGETs) != 0 || len(hub.Transfers()) != 0 {
		t.Errorf("ResetCounts left %+v", c)
	}
}

func TestRepoPrefix(t *testing.T) {
	reg := StartRegistry(t)
	img := reg.PushImage(t, "library/node", "21", ImageOptions{})
	reg.PushImage(t, "library/node", "22", ImageOptions{})
	for _, tc := range []struct {
		name          string
		scope         string
		wantChallenge string
	}{
		{"repository scope", "", `scope="repository:docker/library/node:pull"`},
		{"ECR aws scope", "aws", `scope="aws"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hub := NewHub(t, reg, Options{RepoPrefix: "docker/", Service: "public.ecr.aws", Scope: tc.scope})
			r := do(t, http.MethodGet, hub.URL+"/v2/docker/library/node/manifests/21", nil)
			if ch := r.hdr.Get("WWW-Authenticate"); r.status != 401 || !strings.Contains(ch, tc.wantChallenge) || !strings.Contains(ch, `service="public.ecr.aws"`) {
				t.Fatalf("challenge %d %q", r.status, ch)
			}
			scope := tc.scope
			if scope == "" {
				scope = pullScope("docker/library/node")
			}
			tok, tr := token(t, hub, scope, "", "")
			if tr.status != 200 {
				t.Fatalf("anonymous token: %d %s", tr.status, tr.body)
			}
			for _, p := range []struct {
				path   string
				status int
			}{
				{"/v2/docker/library/node/manifests/21", 200},
				{"/v2/docker/library/node/blobs/" + img.Layers[0].String(), 200},
				{"/v2/library/node/manifests/21", map[string]int{"": 401, "aws": 404}[tc.scope]},
			} {
				r := do(t, http.MethodGet, hub.URL+p.path, bearer(tok))
				if r.status != p.status {
					t.Errorf("GET %s = %d, want %d", p.path, r.status, p.status)
				}
			}
			r = do(t, http.MethodGet, hub.URL+"/v2/docker/library/node/tags/list?n=1", bearer(tok))
			direct := do(t, http.MethodGet, reg.URL+"/v2/library/node/tags/list?n=1", nil)
			wantLink := strings.Replace(direct.hdr.Get("Link"), "</v2/", "</v2/docker/", 1)
			if link := r.hdr.Get("Link"); r.status != 200 || link != wantLink {
				t.Errorf("tags list %d, Link %q, want %q", r.status, link, wantLink)
			}
			if got := hub.Counts().ManifestGETsByRepo; got["docker/library/node"] != 1 {
				t.Errorf("ManifestGETsByRepo = %v", got)
			}

			ref, _ := name.ParseReference(hub.Host+"/docker/library/node:21", name.Insecure)
			pulled, err := remote.Image(ref, remote.WithContext(t.Context()))
			if err != nil {
				t.Fatalf("remote.Image through mirror: %v", err)
			}
			if d, _ := pulled.Digest(); d.String() != img.Digest.String() {
				t.Errorf("mirror resolved %s, want %s", d, img.Digest)
			}
		})
	}
}

func TestPassThrough(t *testing.T) {
	reg := StartRegistry(t)
	img := reg.PushImage(t, "library/alpine", "3.19", ImageOptions{OCI: true, LayerSize: 4096})
	hub := NewHub(t, reg, Options{NoAuth: true})
	for _, tc := range []struct {
		name, method, path string
		hdr                http.Header
		compare            []string
	}{
		{"manifest GET", http.MethodGet, "/v2/library/alpine/manifests/3.19", http.Header{"Accept": {"application/vnd.oci.image.manifest.v1+json"}},
			[]string{"Docker-Content-Digest", "Content-Type", "Content-Length", "Etag"}},
		{"manifest HEAD", http.MethodHead, "/v2/library/alpine/manifests/3.19", http.Header{"Accept": {"application/vnd.oci.image.manifest.v1+json"}},
			[]string{"Docker-Content-Digest", "Content-Type", "Content-Length"}},
		{"blob range", http.MethodGet, "/v2/library/alpine/blobs/" + img.Layers[0].String(), http.Header{"Range": {"bytes=10-99"}},
			[]string{"Docker-Content-Digest", "Content-Type", "Content-Length", "Content-Range"}},
		{"blob HEAD", http.MethodHead, "/v2/library/alpine/blobs/" + img.Layers[0].String(), nil,
			[]string{"Docker-Content-Digest", "Content-Length"}},
		{"tags page", http.MethodGet, "/v2/library/alpine/tags/list?n=1", nil, []string{"Content-Type", "Link"}},
		{"unknown manifest", http.MethodGet, "/v2/library/alpine/manifests/nope", nil, []string{"Content-Type", "Content-Length"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := do(t, tc.method, reg.URL+tc.path, tc.hdr)
			got := do(t, tc.method, hub.URL+tc.path, tc.hdr)
			if got.status != want.status || !bytes.Equal(got.body, want.body) {
				t.Fatalf("hub %d %q, registry %d %q", got.status, got.body, want.status, want.body)
			}
			for _, k := range tc.compare {
				if got.hdr.Get(k) != want.hdr.Get(k) {
					t.Errorf("%s: hub %q, registry %q", k, got.hdr.Get(k), want.hdr.Get(k))
				}
			}
			if got.hdr.Get("Docker-Distribution-API-Version") != "registry/2.0" {
				t.Error("no Docker-Distribution-API-Version")
			}
		})
	}
}

// TestStripsAuthorization puts the hub in front of a probe that records what
// reaches the backend.
func TestStripsAuthorization(t *testing.T) {
	seen := make(chan string, 1)
	probe := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("Authorization")
		w.WriteHeader(http.StatusNotFound)
	}))
	defer probe.Close()
	u, _ := url.Parse(probe.URL)
	hub := NewHub(t, &Registry{URL: probe.URL, Host: u.Host}, Options{Users: map[string]string{"a": "b"}})
	tok, _ := token(t, hub, pullScope("x/y"), "a", "b")
	do(t, http.MethodGet, hub.URL+"/v2/x/y/manifests/latest", bearer(tok))
	if got := <-seen; got != "" {
		t.Errorf("backend received Authorization %q", got)
	}
}

// TestThrottleAndDelay checks that slowed responses are still correct and
// recorded; how slow they are is deliberately not asserted.
func TestThrottleAndDelay(t *testing.T) {
	reg := StartRegistry(t)
	img := reg.PushImage(t, "library/alpine", "3.19", ImageOptions{Uncompressed: true, LayerSize: 64 << 10})
	hub := NewHub(t, reg, Options{NoAuth: true})
	hub.SetThrottle(16 << 20)
	hub.SetDelay(time.Millisecond)
	r := do(t, http.MethodGet, hub.URL+"/v2/library/alpine/blobs/"+img.Layers[0].String(), nil)
	if r.err != nil || r.status != 200 || digest.FromBytes(r.body) != img.Layers[0] {
		t.Fatalf("throttled blob: %d, err %v", r.status, r.err)
	}
	tr := hub.Transfers()
	if len(tr) != 1 || tr[0].Bytes != 64<<10 || tr[0].CDN || hub.Counts().BlobBytes != 64<<10 {
		t.Errorf("transfers %+v", tr)
	}
}

// TestHang: FaultHang reads a request and writes nothing until Release,
// which lets it be answered intact; a client that gives up, or the end of
// the test, leaves the hub silent to the last.
func TestHang(t *testing.T) {
	reg := StartRegistry(t)
	img := reg.PushImage(t, "library/alpine", "3.19", ImageOptions{LayerSize: 8 << 10})
	manifestPath := "/v2/library/alpine/manifests/3.19"
	blobPath := "/v2/library/alpine/blobs/" + img.Layers[0].String()

	// async sends a request; its answer arrives on the channel.
	async := func(ctx context.Context, method, u string, hdr http.Header) <-chan response {
		ch := make(chan response, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, method, u, nil)
			for k, v := range hdr {
				req.Header[k] = v
			}
			req.Header.Set("Accept", manifestAccept())
			resp, err := newClient().Do(req)
			if err != nil {
				ch <- response{err: err}
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			ch <- response{status: resp.StatusCode, hdr: resp.Header, body: body, err: err}
		}()
		return ch
	}
	waitHanging := func(t *testing.T, h *Hub, n int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); h.Counts().Hanging != n; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("hanging = %d, want %d", h.Counts().Hanging, n)
			}
		}
	}

	t.Run("scopes", func(t *testing.T) {
		for _, tc := range []struct {
			name                   string
			scope                  Scope
			manifest, blob, tokens bool // which hang
		}{
			{"manifests", ScopeManifests, true, false, false},
			{"blobs", ScopeBlobs, false, true, false},
			{"all", ScopeAll, true, true, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				hub := NewHub(t, reg, Options{})
				tok, _ := token(t, hub, pullScope("library/alpine"), "", "")
				hub.SetFaultFor(FaultHang, tc.scope)
				reqs := []struct {
					hangs  bool
					method string
					url    string
					hdr    http.Header
				}{
					{tc.manifest, http.MethodGet, hub.URL + manifestPath, bearer(tok)},
					{tc.manifest, http.MethodHead, hub.URL + manifestPath, bearer(tok)},
					{tc.blob, http.MethodGet, hub.URL + blobPath, bearer(tok)},
					{tc.tokens, http.MethodGet, hub.Realm + "?service=registry.docker.io", nil},
					{tc.tokens, http.MethodGet, hub.URL + "/v2/", nil},
				}
				var held []<-chan response
				for _, rq := range reqs {
					ch := async(t.Context(), rq.method, rq.url, rq.hdr)
					if !rq.hangs {
						if r := <-ch; r.err != nil || r.status == 0 {
							t.Errorf("%s %s: %v, want an answer", rq.method, rq.url, r.err)
						}
						continue
					}
					held = append(held, ch)
					waitHanging(t, hub, len(held))
				}
				for _, ch := range held {
					select {
					case r := <-ch:
						t.Fatalf("a hanging request was answered: %d %v", r.status, r.err)
					default:
					}
				}
				if c := hub.Counts(); c.Hung != len(held) {
					t.Errorf("Hung = %d, want %d", c.Hung, len(held))
				}
				// Released, each is answered as if nothing had happened;
				// the fault still holds new requests.
				hub.Release()
				for _, ch := range held {
					if r := <-ch; r.err != nil || r.status == 0 {
						t.Errorf("released request: %d %v", r.status, r.err)
					}
				}
				waitHanging(t, hub, 0)
				late := async(t.Context(), http.MethodGet, hub.URL+manifestPath, bearer(tok))
				if tc.manifest {
					waitHanging(t, hub, 1)
					hub.SetFault(FaultNone)
					hub.Release()
				}
				if r := <-late; r.status != 200 || digest.FromBytes(r.body) != img.Digest {
					t.Errorf("manifest after release: %d %v", r.status, r.err)
				}
			})
		}
	})

	t.Run("client gives up", func(t *testing.T) {
		hub := NewHub(t, reg, Options{NoAuth: true})
		hub.SetFaultFor(FaultHang, ScopeManifests)
		ctx, cancel := context.WithCancel(t.Context())
		ch := async(ctx, http.MethodGet, hub.URL+manifestPath, nil)
		waitHanging(t, hub, 1)
		cancel()
		if r := <-ch; !errors.Is(r.err, context.Canceled) {
			t.Errorf("cancelled request: %d %v", r.status, r.err)
		}
		waitHanging(t, hub, 0)
	})

	// The end of the test closes the connection without a word: the raw
	// bytes the client read are none at all.
	t.Run("test ends", func(t *testing.T) {
		var read chan []byte
		t.Run("hub", func(t *testing.T) {
			hub := NewHub(t, reg, Options{NoAuth: true})
			hub.SetFault(FaultHang)
			conn, err := net.Dial("tcp", hub.Host)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			if _, err := io.WriteString(conn, "GET "+manifestPath+" HTTP/1.1\r\nHost: "+hub.Host+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			read = make(chan []byte, 1)
			go func() { b, _ := io.ReadAll(conn); read <- b }()
			waitHanging(t, hub, 1)
		})
		if b := <-read; len(b) != 0 {
			t.Errorf("a hanging hub wrote %q as the test ended", b)
		}
	})
}

// TestDelay: a slow hub answers every /v2/ request, intact, after the delay;
// requests are counted as they arrive, before their answer.
func TestDelay(t *testing.T) {
	reg := StartRegistry(t)
	img := reg.PushImage(t, "library/alpine", "3.19", ImageOptions{})
	hub := NewHub(t, reg, Options{NoAuth: true})
	hub.SetDelay(time.Hour)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, hub.URL+"/v2/library/alpine/manifests/3.19", nil)
		resp, err := newClient().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	for hub.Counts().Requests == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("answered within the delay (err %v)", err)
	default:
	}
	cancel()
	<-done
	hub.SetDelay(time.Millisecond)
	r := do(t, http.MethodGet, hub.URL+"/v2/library/alpine/manifests/3.19", nil)
	if r.err != nil || r.status != 200 || digest.FromBytes(r.body) != img.Digest {
		t.Errorf("delayed manifest: %d %v", r.status, r.err)
	}
}

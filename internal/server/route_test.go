package server

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/distribution/reference"
)

func testRouter() *Router {
	regs := map[string]string{
		"docker.io": "docker.io", "index.docker.io": "docker.io", "registry-1.docker.io": "docker.io",
		"ghcr.io": "ghcr.io", "127.0.0.1:5001": "127.0.0.1:5001",
	}
	return &Router{Lookup: func(h string) (string, bool) { r, ok := regs[h]; return r, ok }, DefaultRegistry: "docker.io"}
}

func TestRouterParse(t *testing.T) {
	const dg = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	tests := []struct {
		name     string
		path     string
		query    string
		want     Route
		wantCode string
	}{
		{"base", "/v2/", "", Route{Kind: KindBase}, ""},
		{"base without slash", "/v2", "", Route{Kind: KindBase}, ""},
		{"dockerd bare official", "/v2/library/alpine/manifests/3.19", "", Route{Kind: KindManifest, Registry: "docker.io", Repo: "library/alpine", Ref: "3.19", Name: "library/alpine"}, ""},
		{"bare short name normalised", "/v2/alpine/manifests/latest", "", Route{Kind: KindManifest, Registry: "docker.io", Repo: "library/alpine", Ref: "latest", Name: "alpine"}, ""},
		{"bare user repo", "/v2/bitnami/redis/blobs/" + dg, "", Route{Kind: KindBlob, Registry: "docker.io", Repo: "bitnami/redis", Ref: dg, Name: "bitnami/redis"}, ""},
		{"containerd ns", "/v2/library/alpine/manifests/3.19", "ns=docker.io", Route{Kind: KindManifest, Registry: "docker.io", Repo: "library/alpine", Ref: "3.19", Name: "library/alpine", NS: "docker.io"}, ""},
		{"containerd ns ghcr", "/v2/org/app/manifests/v1", "ns=ghcr.io", Route{Kind: KindManifest, Registry: "ghcr.io", Repo: "org/app", Ref: "v1", Name: "org/app", NS: "ghcr.io"}, ""},
		{"ns alias", "/v2/library/alpine/manifests/3.19", "ns=index.docker.io", Route{Kind: KindManifest, Registry: "docker.io", Repo: "library/alpine", Ref: "3.19", Name: "library/alpine", NS: "index.docker.io"}, ""},
		{"podman host in path", "/v2/docker.io/library/alpine/manifests/3.19", "", Route{Kind: KindManifest, Registry: "docker.io", Repo: "library/alpine", Ref: "3.19", Name: "docker.io/library/alpine"}, ""},
		{"host in path short name", "/v2/docker.io/alpine/manifests/3.19", "", Route{Kind: KindManifest, Registry: "docker.io", Repo: "library/alpine", Ref: "3.19", Name: "docker.io/alpine"}, ""},
		{"host with port in path", "/v2/127.0.0.1:5001/team/app/tags/list", "", Route{Kind: KindTags, Registry: "127.0.0.1:5001", Repo: "team/app", Name: "127.0.0.1:5001/team/app"}, ""},
		{"ghcr host in path digest", "/v2/ghcr.io/org/app/manifests/" + dg, "", Route{Kind: KindManifest, Registry: "ghcr.io", Repo: "org/app", Ref: dg, Name: "ghcr.io/org/app"}, ""},
		{"repo named manifests", "/v2/ghcr.io/a/manifests/b/manifests/v1", "", Route{Kind: KindManifest, Registry: "ghcr.io", Repo: "a/manifests/b", Ref: "v1", Name: "ghcr.io/a/manifests/b"}, ""},
		{"referrers", "/v2/ghcr.io/org/app/referrers/" + dg, "", Route{Kind: KindReferrers, Registry: "ghcr.io", Repo: "org/app", Ref: dg, Name: "ghcr.io/org/app"}, ""},
		{"unconfigured host in path", "/v2/evil.example.com/x/manifests/latest", "", Route{}, "NAME_UNKNOWN"},
		{"unconfigured ns", "/v2/x/y/manifests/latest", "ns=evil.example.com", Route{}, "NAME_UNKNOWN"},
		{"upload", "/v2/library/alpine/blobs/uploads/", "", Route{}, "UNSUPPORTED"},
		{"upload session", "/v2/library/alpine/blobs/uploads/1234", "", Route{}, "UNSUPPORTED"},
		{"catalog", "/v2/_catalog", "", Route{}, "UNSUPPORTED"},
		{"bad tag", "/v2/library/alpine/manifests/-bad", "", Route{}, "MANIFEST_UNKNOWN"},
		{"bad digest", "/v2/library/alpine/blobs/sha256:zz", "", Route{}, "DIGEST_INVALID"},
		{"bad manifest digest", "/v2/library/alpine/manifests/sha256:12", "", Route{}, "DIGEST_INVALID"},
		{"upper-case repo", "/v2/Library/Alpine/manifests/latest", "", Route{}, "NAME_INVALID"},
		{"dot-dot repo", "/v2/docker.io/../etc/manifests/latest", "", Route{}, "NAME_INVALID"},
		{"unknown endpoint", "/v2/library/alpine/whatever", "", Route{}, "NOT_FOUND"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, _ := url.ParseQuery(tc.query)
			got, err := testRouter().Parse(tc.path, q)
			if tc.wantCode != "" {
				if err == nil || err.Code != tc.wantCode {
					t.Fatalf("Parse(%q) = %+v, %v; want error %s", tc.path, got, err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.path, err)
			}
			if got != tc.want {
				t.Fatalf("Parse(%q)\n got %+v\nwant %+v", tc.path, got, tc.want)
			}
		})
	}
}

// TestRouterParseBadReference pins the status of each malformed reference,
// as the OCI conformance suite checks it and as Distribution answers: a
// manifest "tag" that is no tag names a manifest that cannot exist (404
// MANIFEST_UNKNOWN), while a malformed digest is a bad request (400
// DIGEST_INVALID), for manifests, blobs and referrers alike.
func TestRouterParseBadReference(t *testing.T) {
	tests := []struct {
		path       string
		wantStatus int
		wantCode   string
	}{
		{"/v2/library/conf/manifests/.INVALID_MANIFEST_NAME", http.StatusNotFound, "MANIFEST_UNKNOWN"},
		{"/v2/docker.io/library/conf/manifests/.INVALID_MANIFEST_NAME", http.StatusNotFound, "MANIFEST_UNKNOWN"},
		{"/v2/library/conf/manifests/-bad", http.StatusNotFound, "MANIFEST_UNKNOWN"},
		{"/v2/library/conf/manifests/a b", http.StatusNotFound, "MANIFEST_UNKNOWN"},
		{"/v2/library/conf/manifests/" + strings.Repeat("a", 129), http.StatusNotFound, "MANIFEST_UNKNOWN"},
		{"/v2/library/conf/manifests/sha256:totallywrong", http.StatusBadRequest, "DIGEST_INVALID"},
		{"/v2/library/conf/manifests/foo:bar", http.StatusBadRequest, "DIGEST_INVALID"},
		{"/v2/library/conf/blobs/sha256:totallywrong", http.StatusBadRequest, "DIGEST_INVALID"},
		{"/v2/library/conf/blobs/latest", http.StatusBadRequest, "DIGEST_INVALID"},
		{"/v2/library/conf/referrers/latest", http.StatusBadRequest, "DIGEST_INVALID"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			_, err := testRouter().Parse(tc.path, url.Values{})
			if err == nil || err.Status != tc.wantStatus || err.Code != tc.wantCode {
				t.Fatalf("Parse(%q) error = %+v; want %d %s", tc.path, err, tc.wantStatus, tc.wantCode)
			}
		})
	}
}

func TestParseRange(t *testing.T) {
	tests := []struct {
		v          string
		size       int64
		start, end int64
		ok         bool
	}{
		{"bytes=0-", 100, 0, 99, true},
		{"bytes=10-19", 100, 10, 19, true},
		{"bytes=90-200", 100, 90, 99, true},
		{"bytes=100-", 100, 0, 0, false},
		{"bytes=-10", 100, 0, 0, false},
		{"bytes=0-1,5-6", 100, 0, 0, false},
		{"bytes=5-", -1, 0, 0, false},
		{"items=0-1", 100, 0, 0, false},
		{"", 100, 0, 0, false},
	}
	for _, tc := range tests {
		s, e, ok := parseRange(tc.v, tc.size)
		if ok != tc.ok || (ok && (s != tc.start || e != tc.end)) {
			t.Errorf("parseRange(%q, %d) = %d, %d, %v", tc.v, tc.size, s, e, ok)
		}
	}
}

func TestRewriteLink(t *testing.T) {
	rt := Route{Kind: KindTags, Name: "docker.io/library/alpine", NS: ""}
	got, ok := rewriteLink(`</v2/library/alpine/tags/list?last=3.19&n=2>; rel="next"`, rt)
	want := `</v2/docker.io/library/alpine/tags/list?last=3.19&n=2>; rel="next"`
	if !ok || got != want {
		t.Fatalf("rewriteLink = %q, want %q", got, want)
	}
	rt = Route{Kind: KindTags, Name: "library/alpine", NS: "docker.io"}
	got, _ = rewriteLink(`<https://registry-1.docker.io/v2/library/alpine/tags/list?last=b&n=1>; rel="next"`, rt)
	want = `</v2/library/alpine/tags/list?last=b&n=1&ns=docker.io>; rel="next"`
	if got != want {
		t.Fatalf("rewriteLink = %q, want %q", got, want)
	}
}

func TestValidRepoMatchesReference(t *testing.T) {
	cases := []string{
		"library/alpine", "a", "a/b/c", "foo.bar/baz", "a_b", "a__b", "a___b", "a-b", "a--b", "a.b",
		"a..b", "a.-b", "-a", "a-", "_a", "a_", ".a", "a.", "A", "a/B", "a//b", "/a", "a/", "",
		"a_-b", "a-_b", "9", "x/9-9/0.0", "ns/re_po--x", "a" + strings.Repeat("b", 300), "ä", "a b", "a:b", "a@b",
	}
	for _, c := range cases {
		named, err := reference.ParseNamed("regcache.invalid/" + c)
		want := err == nil && reference.Path(named) == c
		if got := validRepo(c); got != want {
			t.Errorf("validRepo(%q) = %v, reference says %v", c, got, want)
		}
	}
}

func FuzzValidRepo(f *testing.F) {
	for _, s := range []string{"library/alpine", "a__b", "a-.b", "x/y_z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, c string) {
		named, err := reference.ParseNamed("regcache.invalid/" + c)
		want := err == nil && reference.Path(named) == c
		if got := validRepo(c); got != want {
			t.Errorf("validRepo(%q) = %v, reference says %v", c, got, want)
		}
	})
}

func TestAnchoredTag(t *testing.T) {
	for _, c := range []string{"latest", "3.19", "v1.0-rc1", "_x", "A_b.c-d", strings.Repeat("a", 128), strings.Repeat("a", 129), "", "-a", ".a", "a/b", "a:b", "a b"} {
		want := reference.TagRegexp.FindString(c) == c && c != ""
		if got := anchoredTag(c); got != want {
			t.Errorf("anchoredTag(%q) = %v, want %v", c, got, want)
		}
	}
}

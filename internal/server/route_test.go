package server

import (
	"errors"
	"net/url"
	"testing"

	"github.com/regcache/regcache/internal/regerr"
)

func testRouter() *Router {
	regs := map[string]string{
		"docker.io": "docker.io", "index.docker.io": "docker.io", "registry-1.docker.io": "docker.io",
		"ghcr.io": "ghcr.io", "127.0.0.1:5001": "127.0.0.1:5001",
	}
	return &Router{Lookup: func(h string) (string, bool) { r, ok := regs[h]; return r, ok }, DefaultRegistry: "docker.io"}
}

// want is a route's expected fields, as strings.
type want struct {
	kind           Kind
	registry, repo string
	ref            string // tag or digest
	name, ns       string
}

func (w want) check(t *testing.T, got Route) {
	t.Helper()
	ref := got.Manifest.String()
	if got.Digest != "" {
		ref = got.Digest.String()
	}
	g := want{got.Kind, got.Repo.Registry(), got.Repo.Path(), ref, got.Name, got.NS}
	if g != w {
		t.Fatalf("got  %+v\nwant %+v", g, w)
	}
}

func TestRouterParse(t *testing.T) {
	const dg = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	tests := []struct {
		name     string
		path     string
		query    string
		want     want
		wantKind regerr.Kind
		wantCode string
	}{
		{name: "base", path: "/v2/", want: want{kind: KindBase}},
		{name: "base without slash", path: "/v2", want: want{kind: KindBase}},
		{name: "dockerd bare official", path: "/v2/library/alpine/manifests/3.19", want: want{KindManifest, "docker.io", "library/alpine", "3.19", "library/alpine", ""}},
		{name: "bare short name normalised", path: "/v2/alpine/manifests/latest", want: want{KindManifest, "docker.io", "library/alpine", "latest", "alpine", ""}},
		{name: "bare user repo", path: "/v2/bitnami/redis/blobs/" + dg, want: want{KindBlob, "docker.io", "bitnami/redis", dg, "bitnami/redis", ""}},
		{name: "containerd ns", path: "/v2/library/alpine/manifests/3.19", query: "ns=docker.io", want: want{KindManifest, "docker.io", "library/alpine", "3.19", "library/alpine", "docker.io"}},
		{name: "containerd ns ghcr", path: "/v2/org/app/manifests/v1", query: "ns=ghcr.io", want: want{KindManifest, "ghcr.io", "org/app", "v1", "org/app", "ghcr.io"}},
		{name: "ns alias", path: "/v2/library/alpine/manifests/3.19", query: "ns=index.docker.io", want: want{KindManifest, "docker.io", "library/alpine", "3.19", "library/alpine", "index.docker.io"}},
		{name: "podman host in path", path: "/v2/docker.io/library/alpine/manifests/3.19", want: want{KindManifest, "docker.io", "library/alpine", "3.19", "docker.io/library/alpine", ""}},
		{name: "host in path short name", path: "/v2/docker.io/alpine/manifests/3.19", want: want{KindManifest, "docker.io", "library/alpine", "3.19", "docker.io/alpine", ""}},
		{name: "host with port in path", path: "/v2/127.0.0.1:5001/team/app/tags/list", want: want{KindTags, "127.0.0.1:5001", "team/app", "", "127.0.0.1:5001/team/app", ""}},
		{name: "ghcr host in path digest", path: "/v2/ghcr.io/org/app/manifests/" + dg, want: want{KindManifest, "ghcr.io", "org/app", dg, "ghcr.io/org/app", ""}},
		{name: "repo named manifests", path: "/v2/ghcr.io/a/manifests/b/manifests/v1", want: want{KindManifest, "ghcr.io", "a/manifests/b", "v1", "ghcr.io/a/manifests/b", ""}},
		{name: "referrers", path: "/v2/ghcr.io/org/app/referrers/" + dg, want: want{KindReferrers, "ghcr.io", "org/app", dg, "ghcr.io/org/app", ""}},
		{name: "unconfigured host in path", path: "/v2/evil.example.com/x/manifests/latest", wantKind: regerr.NameUnknown},
		{name: "unconfigured ns", path: "/v2/x/y/manifests/latest", query: "ns=evil.example.com", wantKind: regerr.NameUnknown},
		{name: "upload", path: "/v2/library/alpine/blobs/uploads/", wantKind: regerr.Unsupported},
		{name: "upload session", path: "/v2/library/alpine/blobs/uploads/1234", wantKind: regerr.Unsupported},
		{name: "catalog", path: "/v2/_catalog", wantKind: regerr.Unsupported},
		// The OCI conformance suite pulls ".INVALID_MANIFEST_NAME" and
		// wants 404: no manifest can have a name outside the tag grammar.
		{name: "invalid tag is an unknown manifest", path: "/v2/library/alpine/manifests/.INVALID_MANIFEST_NAME", wantKind: regerr.NotFound},
		{name: "bad tag", path: "/v2/library/alpine/manifests/-bad", wantKind: regerr.NotFound},
		{name: "bad digest", path: "/v2/library/alpine/blobs/sha256:zz", wantKind: regerr.Invalid, wantCode: "DIGEST_INVALID"},
		{name: "bad manifest digest", path: "/v2/library/alpine/manifests/sha256:12", wantKind: regerr.Invalid, wantCode: "DIGEST_INVALID"},
		{name: "upper-case repo", path: "/v2/Library/Alpine/manifests/latest", wantKind: regerr.Invalid, wantCode: "NAME_INVALID"},
		{name: "dot-dot repo", path: "/v2/docker.io/../etc/manifests/latest", wantKind: regerr.Invalid, wantCode: "NAME_INVALID"},
		{name: "unknown endpoint", path: "/v2/library/alpine/whatever", wantKind: regerr.NotFound, wantCode: "NOT_FOUND"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q, _ := url.ParseQuery(tc.query)
			got, err := testRouter().Parse(tc.path, q)
			if tc.wantKind != regerr.Internal {
				var re *regerr.Error
				if !errors.As(err, &re) || re.Kind != tc.wantKind || (tc.wantCode != "" && re.Code != tc.wantCode) {
					t.Fatalf("Parse(%q) = %+v, %v; want %v %s", tc.path, got, err, tc.wantKind, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.path, err)
			}
			tc.want.check(t, got)
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

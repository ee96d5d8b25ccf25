package server

import (
	"net/url"
	"strings"
	"testing"

	"github.com/regcache/regcache/internal/ref"
)

// The router reads every path a stranger sends: it must never panic, and
// a route it accepts must name a configured registry and a valid
// repository, whatever the spelling.
func FuzzRouterParse(f *testing.F) {
	for _, s := range []string{
		"/v2/library/alpine/manifests/3.19", "/v2/docker.io/library/alpine/blobs/sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
		"/v2/x/tags/list", "/v2/../etc/manifests/a", "/v2/evil.com/a/manifests/b", "/v2/a/manifests/.INVALID", "/v2//manifests/x",
		"/v2/127.0.0.1:5001/a/referrers/sha256:aa", "/v2/_catalog", "/v2/a/blobs/uploads/x",
	} {
		f.Add(s, "")
		f.Add(s, "ns=docker.io")
	}
	rt := testRouter()
	f.Fuzz(func(t *testing.T, path, rawQuery string) {
		q, _ := url.ParseQuery(rawQuery)
		r, err := rt.Parse(path, q)
		if err != nil || r.Kind == KindBase {
			return
		}
		if _, ok := rt.Lookup(r.Repo.Registry()); !ok {
			t.Fatalf("Parse(%q) routed to unconfigured registry %q", path, r.Repo.Registry())
		}
		if !ref.ValidPath(r.Repo.Path()) || strings.Contains(r.Repo.Path(), "..") {
			t.Fatalf("Parse(%q) accepted repository %q", path, r.Repo.Path())
		}
		switch r.Kind {
		case KindManifest:
			if (r.Manifest.Digest == "") == r.Manifest.Tag.IsZero() {
				t.Fatalf("Parse(%q): manifest route %+v names neither or both", path, r.Manifest)
			}
		case KindBlob, KindReferrers:
			if r.Digest.Validate() != nil {
				t.Fatalf("Parse(%q) accepted digest %q", path, r.Digest)
			}
		}
	})
}

// Range headers come from clients: a parsed range is always inside the blob.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-", "bytes=10-19", "bytes=-5", "bytes=5-1", "bytes=0-1,2-3", "bytes=99999999999999999999-", "items=0-1"} {
		f.Add(s, int64(100))
	}
	f.Fuzz(func(t *testing.T, v string, size int64) {
		start, end, ok := parseRange(v, size)
		if ok && (start < 0 || end < start || end >= size) {
			t.Fatalf("parseRange(%q, %d) = %d-%d", v, size, start, end)
		}
	})
}

package pull

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/regerr"
	"github.com/regcache/regcache/internal/upstream"
)

var errDown = &regerr.Error{Kind: regerr.Unavailable, Registry: "docker.io", Message: "connection refused"}
var err429 = &regerr.Error{Kind: regerr.RateLimited, Registry: "docker.io", RetryAfter: time.Minute}

func (h *harness) tag(t *testing.T, path, tag string) (*Manifest, error) {
	t.Helper()
	return h.cache.ManifestByTag(context.Background(), tagKey(t, path, tag))
}

// Within tag_ttl a tag is answered from the index; past it, a free HEAD
// revalidates it; a moved tag costs one GET, by digest.
func TestTagTTL(t *testing.T) {
	h := newHarness(t, nil)
	md, _ := h.src.push("library/alpine", "3.19", []byte("config one"))
	steps := []struct {
		name        string
		advance     time.Duration
		move        bool
		want        Result
		heads, gets int // cumulative HEADs and GETs by digest at the origin
	}{
		{"cold: HEAD then GET by digest", 0, false, Miss, 1, 1},
		{"within the TTL: no upstream request", 30 * time.Second, false, Hit, 1, 1},
		{"past the TTL: a HEAD revalidates", time.Minute, false, Revalidated, 2, 1},
		{"the tag moved: HEAD, then one GET", 2 * time.Minute, true, Miss, 3, 2},
		{"and it is fresh again", 10 * time.Second, false, Hit, 3, 2},
	}
	want := md
	for _, st := range steps {
		h.clock.Advance(st.advance)
		if st.move {
			want, _ = h.src.push("library/alpine", "3.19", []byte("config two"))
		}
		m, err := h.tag(t, "library/alpine", "3.19")
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if m.Result != st.want || m.Digest != want {
			t.Errorf("%s: result %s digest %s, want %s %s", st.name, m.Result, m.Digest, st.want, want)
		}
		if got := [2]int{h.src.n("HEAD manifest"), h.src.n("GET manifest by digest")}; got != [2]int{st.heads, st.gets} {
			t.Errorf("%s: HEADs, GETs = %v, want %d, %d", st.name, got, st.heads, st.gets)
		}
	}
	if n := h.src.n("GET manifest by tag"); n != 0 {
		t.Errorf("%d GETs by tag: a HEAD that names the digest makes them unnecessary", n)
	}
}

// A failing origin does not fail a pull of a cached tag: it is served
// stale, with the reason; an uncached tag gets the origin's error.
func TestStaleOnError(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		reason string
	}{
		{"unavailable", errDown, "error"},
		{"rate limited", err429, "rate_limited"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(o *Options) { o.TagFallback = false })
			md, _ := h.src.push("library/alpine", "3.19", []byte("config"))
			if _, err := h.tag(t, "library/alpine", "3.19"); err != nil {
				t.Fatal(err)
			}
			h.clock.Advance(time.Hour)
			h.src.setOriginErr(tc.err)
			m, err := h.tag(t, "library/alpine", "3.19")
			if err != nil || m.Result != Stale || m.Digest != md || m.StaleReason != tc.err {
				t.Fatalf("cached tag: %+v, %v", m, err)
			}
			if got := staleReason(m.StaleReason); got != tc.reason {
				t.Errorf("stale reason %q, want %q", got, tc.reason)
			}
			if _, err := h.tag(t, "library/alpine", "edge"); !errors.Is(err, tc.err) {
				t.Fatalf("uncached tag: %v, want the origin's error", err)
			}
		})
	}
}

// The origin's "no such tag" is authoritative: a deleted tag stops
// resolving, even though it was cached.
func TestDeletedTagStopsResolving(t *testing.T) {
	h := newHarness(t, nil)
	h.src.push("library/alpine", "3.19", []byte("config"))
	if _, err := h.tag(t, "library/alpine", "3.19"); err != nil {
		t.Fatal(err)
	}
	h.src.mu.Lock()
	delete(h.src.tags, "library/alpine:3.19")
	h.src.mu.Unlock()
	h.clock.Advance(time.Hour)
	if _, err := h.tag(t, "library/alpine", "3.19"); !regerr.Is(err, regerr.NotFound) {
		t.Fatalf("deleted tag: %v", err)
	}
	h.src.setOriginErr(errDown)
	if _, err := h.tag(t, "library/alpine", "3.19"); regerr.KindOf(err) != regerr.Unavailable {
		t.Fatalf("deleted tag with the origin down: %v; a forgotten tag must not come back stale", err)
	}
}

// Below the reserve, a moved tag is fetched only from a mirror; if no
// mirror has it, the cached answer is served stale rather than spending a
// counted pull.
func TestReserve(t *testing.T) {
	h := newHarness(t, nil)
	old, _ := h.src.push("library/node", "22", []byte("config one"))
	if _, err := h.tag(t, "library/node", "22"); err != nil {
		t.Fatal(err)
	}
	h.src.mu.Lock()
	h.src.below = true
	h.src.mu.Unlock()
	moved, _ := h.src.push("library/node", "22", []byte("config two"))
	h.clock.Advance(time.Hour)
	m, err := h.tag(t, "library/node", "22")
	if err != nil || m.Result != Stale || m.Digest != old || !errors.Is(m.StaleReason, errReserve) {
		t.Fatalf("below the reserve, no mirror: %+v, %v", m, err)
	}
	h.src.mu.Lock()
	h.src.mirror[moved] = true
	h.src.mu.Unlock()
	h.clock.Advance(time.Hour)
	m, err = h.tag(t, "library/node", "22")
	if err != nil || m.Digest != moved || m.Source != "mirror" {
		t.Fatalf("below the reserve, mirror has it: %+v, %v", m, err)
	}
	if n := h.src.n("GET manifest by digest"); n != 1 {
		t.Errorf("origin GETs = %d, want 1 (the first pull only)", n)
	}
}

// An uncached tag whose origin fails is resolved at a mirror when
// tag_fallback allows, marked as such, and checked at the origin next time.
func TestTagFallbackToMirror(t *testing.T) {
	for _, fallback := range []bool{true, false} {
		t.Run(fmt.Sprint("tag_fallback=", fallback), func(t *testing.T) {
			h := newHarness(t, func(o *Options) { o.TagFallback = fallback })
			md, _ := h.src.push("library/redis", "7", []byte("config"))
			h.src.mu.Lock()
			h.src.mirrorTag["library/redis:7"] = md
			h.src.mu.Unlock()
			h.src.setOriginErr(errDown)
			m, err := h.tag(t, "library/redis", "7")
			if !fallback {
				if !errors.Is(err, errDown) || h.src.n("tag at mirror") != 0 {
					t.Fatalf("fallback off: %v, %d mirror asks", err, h.src.n("tag at mirror"))
				}
				return
			}
			if err != nil || !m.TagFromMirror || m.Digest != md {
				t.Fatalf("fallback: %+v, %v", m, err)
			}
			h.src.setOriginErr(nil)
			m, err = h.tag(t, "library/redis", "7")
			if err != nil || m.TagFromMirror || m.Result != Revalidated {
				t.Fatalf("next pull with the origin back: %+v, %v", m, err)
			}
		})
	}
}

// Concurrent cold pulls of one blob make one upstream fetch, and every
// client gets every byte.
func TestBlobFanOut(t *testing.T) {
	h := newHarness(t, nil)
	data := bytes.Repeat([]byte("layer-bytes "), 20_000)
	_, bd := h.src.push("library/go", "1", data)
	r := repo(t, "library/go")
	h.src.gate = make(chan struct{})
	const clients = 20
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	started := make(chan struct{}, clients)
	for range clients {
		wg.Go(func() {
			b, err := h.cache.Blob(context.Background(), r, bd)
			started <- struct{}{}
			if err != nil {
				errs <- err
				return
			}
			defer b.Close()
			var got bytes.Buffer
			if _, err := b.Stream.CopyTo(context.Background(), &got, -1, nil); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got.Bytes(), data) {
				errs <- fmt.Errorf("got %d bytes", got.Len())
			}
		})
	}
	for range clients {
		<-started // every client joined before any byte arrives
	}
	close(h.src.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := h.src.n("GET blob"); n != 1 {
		t.Errorf("upstream blob GETs = %d, want 1", n)
	}
	if err := h.cache.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, ok := h.store.Blob(bd); !ok || !bytes.Equal(got, data) {
		t.Fatal("the blob was not stored")
	}
	b, err := h.cache.Blob(context.Background(), r, bd)
	if err != nil || b.Content == nil || b.Result != Hit {
		t.Fatalf("second pull: %+v, %v", b, err)
	}
	b.Close()
}

// A stored blob is served through another repository only after the
// origin confirms that repository has it.
func TestBlobScopedToRepository(t *testing.T) {
	h := newHarness(t, nil)
	_, bd := h.src.push("library/go", "1", []byte("shared layer"))
	b, err := h.cache.Blob(context.Background(), repo(t, "library/go"), bd)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, streamOf(b))
	b.Close()
	h.cache.Drain(context.Background())
	other := repo(t, "acme/private")
	h.src.setOriginErr(notFound())
	if _, err := h.cache.Blob(context.Background(), other, bd); !regerr.Is(err, regerr.NotFound) {
		t.Fatalf("blob through a repository the origin does not confirm: %v", err)
	}
	h.src.setOriginErr(nil)
	b, err = h.cache.Blob(context.Background(), other, bd)
	if err != nil || b.Result != Revalidated {
		t.Fatalf("after the origin confirms: %+v, %v", b, err)
	}
	b.Close()
	if n := h.src.n("GET blob"); n != 1 {
		t.Errorf("blob GETs = %d: confirming must not download again", n)
	}
}

func streamOf(b *Blob) io.Reader {
	if b.Content != nil {
		return b.Content
	}
	return b.Stream
}

// A full store does not fail the client: the blob streams through, is
// counted as uncached, and the store is asked to make room; once there is
// room, the next pull stores it.
func TestFullStoreStreamsThrough(t *testing.T) {
	var noSpace int
	h := newHarness(t, func(o *Options) { o.OnNoSpace = func() { noSpace++ } })
	data := bytes.Repeat([]byte("x"), 256<<10)
	_, bd := h.src.push("library/go", "1", data)
	h.store.SetFull(true)
	r := repo(t, "library/go")
	b, err := h.cache.Blob(context.Background(), r, bd)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(streamOf(b))
	b.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("client got %d bytes, %v", len(got), err)
	}
	h.cache.Drain(context.Background())
	if _, ok := h.store.Blob(bd); ok {
		t.Fatal("stored into a full store")
	}
	if noSpace == 0 {
		t.Error("the store's owner was not told it is full")
	}
	h.store.SetFull(false)
	b, err = h.cache.Blob(context.Background(), r, bd)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, streamOf(b))
	b.Close()
	h.cache.Drain(context.Background())
	if _, ok := h.store.Blob(bd); !ok {
		t.Fatal("not stored once there was room")
	}
}

// Tags lists are fetched whole once per ListTTL and paginated locally, so
// distinct ?n= and ?last= queries go upstream once between them.
func TestTagsListPagination(t *testing.T) {
	h := newHarness(t, nil)
	h.src.lists["library/alpine"] = []upstream.List{
		{Body: []byte(`{"name":"library/alpine","tags":["3.19","3.20","edge"]}`), Link: `</v2/library/alpine/tags/list?last=edge&n=3>; rel="next"`},
		{Body: []byte(`{"name":"library/alpine","tags":["3.18","latest"]}`)},
	}
	r := repo(t, "library/alpine")
	tests := []struct {
		query    string
		wantTags string
		wantNext string
	}{
		{"", `["3.18","3.19","3.20","edge","latest"]`, ""},
		{"n=2", `["3.18","3.19"]`, "last=3.19&n=2"},
		{"n=2&last=3.19", `["3.20","edge"]`, "last=edge&n=2"},
		{"n=2&last=edge", `["latest"]`, ""},
		{"last=3.20", `["edge","latest"]`, ""},
		{"n=0", `[]`, ""},
		{"n=10&last=zzz", `[]`, ""},
	}
	for _, tc := range tests {
		q, _ := url.ParseQuery(tc.query)
		l, err := h.cache.Tags(context.Background(), r, q)
		if err != nil {
			t.Fatalf("?%s: %v", tc.query, err)
		}
		if !strings.Contains(string(l.Body), `"tags":`+tc.wantTags) {
			t.Errorf("?%s: body %s, want tags %s", tc.query, l.Body, tc.wantTags)
		}
		next := ""
		if l.Next != nil {
			next = l.Next.Encode()
		}
		if next != tc.wantNext {
			t.Errorf("?%s: next %q, want %q", tc.query, next, tc.wantNext)
		}
	}
	if n := h.src.n("GET list"); n != 2 {
		t.Errorf("upstream list requests = %d, want 2 (the two pages, once)", n)
	}
	if _, err := h.cache.Tags(context.Background(), r, url.Values{"n": {"-1"}}); !regerr.Is(err, regerr.Invalid) {
		t.Errorf("n=-1: %v", err)
	}
}

// The list cache is bounded by bytes, and entries past their stale window
// are dropped.
func TestListCacheBounded(t *testing.T) {
	lc := newListCache(10_000, time.Hour)
	now := time.Now()
	for i := range 100 {
		e := &listEntry{name: fmt.Sprint("repo", i), tags: []string{strings.Repeat("t", 500)}}
		lc.add(fmt.Sprint("k", i), e, now)
		if lc.bytes() > 10_000 {
			t.Fatalf("after %d entries the cache holds %d bytes", i+1, lc.bytes())
		}
	}
	if _, _, ok := lc.get("k99", now); !ok {
		t.Fatal("the newest entry was evicted")
	}
	if _, _, ok := lc.get("k99", now.Add(2*time.Hour)); ok {
		t.Fatal("an entry past its stale window was served")
	}
	if lc.bytes() > 10_000 {
		t.Fatal("over the bound")
	}
}

// A list larger than the limit is refused, never truncated and cached.
func TestOversizedListRefused(t *testing.T) {
	h := newHarness(t, nil)
	big := `{"name":"x","tags":["` + strings.Repeat("a", 9<<20) + `"]}`
	h.src.lists["library/x"] = []upstream.List{
		{Body: []byte(big), Link: `</v2/library/x/tags/list?last=a&n=1>; rel="next"`},
		{Body: []byte(big)},
	}
	if _, err := h.cache.Tags(context.Background(), repo(t, "library/x"), nil); !regerr.Is(err, regerr.TooLarge) {
		t.Fatalf("oversized list: %v", err)
	}
	if h.cache.lists.bytes() != 0 {
		t.Fatal("an oversized list was cached")
	}
}

// A manifest fetched by digest for one repository is confirmed for
// another with a free HEAD, not fetched again.
func TestManifestByDigestAcrossRepositories(t *testing.T) {
	h := newHarness(t, nil)
	md, _ := h.src.push("library/alpine", "3.19", []byte("config"))
	if _, err := h.cache.ManifestByDigest(context.Background(), repo(t, "library/alpine"), md); err != nil {
		t.Fatal(err)
	}
	m, err := h.cache.ManifestByDigest(context.Background(), repo(t, "library/alpine"), md)
	if err != nil || m.Result != Hit {
		t.Fatalf("again: %+v, %v", m, err)
	}
	m, err = h.cache.ManifestByDigest(context.Background(), repo(t, "mirror/alpine"), md)
	if err != nil || m.Result != Revalidated {
		t.Fatalf("other repository: %+v, %v", m, err)
	}
	if n := h.src.n("GET manifest by digest"); n != 1 {
		t.Errorf("GETs = %d, want 1", n)
	}
	var unknown = digest.FromString("nope")
	if _, err := h.cache.ManifestByDigest(context.Background(), repo(t, "library/alpine"), unknown); err == nil {
		t.Fatal("unknown digest served")
	}
}

package adversarial

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// Attacks on tags lists and referrers (issue 13, items 4 and 11): many
// distinct queries for a large list, each of which once cost an upstream
// request and a cache entry of its own, and lists larger than regcache
// reads, which were once truncated into invalid JSON and cached.

// tagsList is a tags list document of n tags, v0000000 up.
func tagsList(name string, n int) []byte {
	b := make([]byte, 0, 32+len(name)+n*11)
	b = append(b, `{"name":"`...)
	b = append(b, name...)
	b = append(b, `","tags":[`...)
	var tag [7]byte
	for i := range n {
		if i > 0 {
			b = append(b, ',')
		}
		for j, v := len(tag)-1, i; j >= 0; j, v = j-1, v/10 {
			tag[j] = byte('0' + v%10)
		}
		b = append(b, `"v`...)
		b = append(b, tag[:]...)
		b = append(b, '"')
	}
	return append(b, "]}"...)
}

// serveList answers with body as JSON; chunked leaves out Content-Length.
func serveList(body []byte, chunked bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if !chunked {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		for rest := body; len(rest) > 0; {
			n := min(len(rest), 1<<20)
			if _, err := w.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
		}
	}
}

// Sixty distinct pages of one large tags list, and thirty distinct
// artifactType filters of one referrers answer, cost one upstream request
// each list and the memory of one copy; the list is fetched again after
// tags_list_ttl; and list_cache_size bounds what several lists hold.
func TestDistinctListQueriesShareOneFetch(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	const tags = 600_000 // 6.6 MB of JSON, ~15 MB in memory
	for i := range 6 {
		name := fmt.Sprintf("team/repo%d", i)
		h.on("GET", "/v2/"+name+"/tags/list", serveList(tagsList(name, tags), false))
	}
	subject := digest.FromString("subject")
	var idx bytes.Buffer
	idx.WriteString(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[`)
	for i := range 300 {
		if i > 0 {
			idx.WriteByte(',')
		}
		fmt.Fprintf(&idx, `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":%q,"size":100,"artifactType":"application/x.type%d"}`,
			digest.FromString(fmt.Sprint(i)), i%30)
	}
	idx.WriteString("]}")
	h.on("GET", "/v2/team/repo0/referrers/"+subject.String(), func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
		w.Write(idx.Bytes())
	})
	const ttl = 5 * time.Second
	rc := startRegcache(t, registryConfig(h.URL, "")+"tags_list_ttl: 5s\nlist_cache_size: 24MiB\n")
	base := rc.URL + "/v2/hostile.example/team/"
	baseline := rc.rss()

	// Sixty distinct queries: page sizes, pages after a tag, and the
	// same with parameters regcache does not use.
	var queries []string
	for i := 1; i <= 20; i++ {
		queries = append(queries, fmt.Sprintf("?n=%d", i*7), fmt.Sprintf("?n=%d&last=v%07d", i, i*1000), fmt.Sprintf("?n=%d&x=%d", i*3, i))
	}
	start := time.Now()
	var peak int64
	for _, q := range queries {
		resp, body := call(t, rc.Client, "GET", base+"repo0/tags/list"+q, nil)
		var doc struct {
			Name string
			Tags []string
		}
		if resp.StatusCode != 200 || json.Unmarshal(body, &doc) != nil || doc.Name != "team/repo0" || len(doc.Tags) == 0 {
			t.Fatalf("%s: %d %.200s", q, resp.StatusCode, body)
		}
		peak = max(peak, rc.rss())
	}
	// Once per tags_list_ttl (a loaded machine may take longer than one
	// to send them all).
	if n, most := h.count("GET /v2/team/repo0/tags/list"), 1+int(time.Since(start)/ttl); n > most {
		t.Errorf("%d distinct queries in %v went upstream %d times, want once per tags_list_ttl", len(queries), time.Since(start), n)
	}
	// One list of 600,000 tags takes about 15 MiB in memory, and more
	// than as much again while its 6.6 MB of JSON are read and parsed (the
	// buffers grow by doubling); Go's collector lets the heap reach twice
	// what is live, more on a busy machine where marking lags. 160 MiB
	// over the baseline is ample for one copy and far below sixty (each
	// of which once kept the whole answer: 400 MB and more).
	t.Logf("RSS: %d MiB at the start, %d MiB at the most during %d queries", baseline>>20, peak>>20, len(queries))
	if peak-baseline > 160<<20 {
		t.Errorf("RSS grew by %d MiB for %d queries of one list", (peak-baseline)>>20, len(queries))
	}

	// Thirty artifactType filters of one referrers answer.
	for i := range 30 {
		resp, body := call(t, rc.Client, "GET", fmt.Sprintf("%sreferrers/%s?artifactType=application/x.type%d", base+"repo0/", subject, i), nil)
		var got struct {
			Manifests []struct{ ArtifactType string }
		}
		if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil || len(got.Manifests) != 10 || resp.Header.Get("OCI-Filters-Applied") != "artifactType" {
			t.Fatalf("referrers filtered by type %d: %d %s %.200s", i, resp.StatusCode, resp.Header.Get("OCI-Filters-Applied"), body)
		}
		for _, m := range got.Manifests {
			if m.ArtifactType != fmt.Sprintf("application/x.type%d", i) {
				t.Fatalf("filter %d let through %s", i, m.ArtifactType)
			}
		}
	}
	if n := h.count("GET /v2/team/repo0/referrers/"); n != 1 {
		t.Errorf("30 referrers filters went upstream %d times, want once", n)
	}

	// Past tags_list_ttl the list is fetched again, once.
	time.Sleep(ttl + time.Second)
	before := h.count("GET /v2/team/repo0/tags/list")
	for _, q := range queries[:5] {
		call(t, rc.Client, "GET", base+"repo0/tags/list"+q, nil)
	}
	if n := h.count("GET /v2/team/repo0/tags/list") - before; n != 1 {
		t.Errorf("after tags_list_ttl the list was fetched %d times, want once", n)
	}

	// Six such lists do not fit in list_cache_size (24 MiB holds one):
	// the oldest go, and memory stays bounded.
	for i := 1; i < 6; i++ {
		call(t, rc.Client, "GET", fmt.Sprintf("%srepo%d/tags/list?n=1", base, i), nil)
		peak = max(peak, rc.rss())
	}
	before = h.count("GET /v2/team/repo1/tags/list")
	call(t, rc.Client, "GET", base+"repo1/tags/list?n=1", nil)
	if h.count("GET /v2/team/repo1/tags/list") == before {
		t.Error("six lists of ~15 MiB each all stayed in a 24 MiB list cache")
	}
	t.Logf("RSS: %d MiB at the most with six lists", peak>>20)
	// One list is kept (~15 MiB), the next is read (6.6 MB, and up to
	// twice that while its buffer grows) and parsed into ~15 MiB more, and
	// the collector lets the heap grow past twice what is live: 100 MiB
	// and more. That the oldest lists went is checked above; this bounds
	// what the rest costs.
	if peak-baseline > 200<<20 {
		t.Errorf("RSS grew by %d MiB with six lists and list_cache_size 24MiB", (peak-baseline)>>20)
	}
}

// A tags list larger than regcache reads (16 MiB), announced or chunked,
// or assembled from pages, is answered with OCI error JSON, and nothing of
// it is cached: asked again, regcache asks again.
func TestOversizedTagsListIsRefused(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	big := tagsList("team/big", 1_600_000) // 17.6 MB
	if len(big) <= 16<<20 {
		t.Fatalf("the list is only %d bytes", len(big))
	}
	h.on("GET", "/v2/team/announced/tags/list", serveList(big, false))
	h.on("GET", "/v2/team/chunked/tags/list", serveList(big, true))
	// Pages of 9 MB each, linked forever.
	page := tagsList("team/paged", 800_000)
	h.on("GET", "/v2/team/paged/tags/list", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", `</v2/team/paged/tags/list?n=800000&last=v0799999>; rel="next"`)
		serveList(page, false)(w, r)
	})
	h.on("GET", "/v2/team/fits/tags/list", serveList(tagsList("team/fits", 1_000_000), false))
	rc := startRegcache(t, namesFor(h.URL, 4, ""))
	for i, repo := range []string{"announced", "chunked", "paged"} {
		path := fmt.Sprintf("/v2/r%d.example/team/%s/tags/list", i, repo)
		for range 2 {
			resp, body := call(t, rc.Client, "GET", rc.URL+path, nil)
			ociErrorBody(t, repo, resp, body, http.StatusBadGateway)
		}
		if n := h.count("GET /v2/team/" + repo + "/tags/list"); n < 2 {
			t.Errorf("%s: asked upstream %d times for two requests: the refusal was cached", repo, n)
		}
	}
	// Just under the limit is served whole and valid.
	resp, body := call(t, rc.Client, "GET", rc.URL+"/v2/r3.example/team/fits/tags/list", nil)
	var doc struct{ Tags []string }
	if resp.StatusCode != 200 || json.Unmarshal(body, &doc) != nil || len(doc.Tags) != 1_000_000 {
		t.Errorf("a list of 11 MB: %d, %d bytes, %d tags", resp.StatusCode, len(body), len(doc.Tags))
	}
}

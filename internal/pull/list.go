package pull

import (
	"container/list"
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
	"github.com/regcache/regcache/internal/upstream"
)

// listSource is what tags lists and referrers need from a registry.
type listSource interface {
	List(ctx context.Context, repo ref.Repo, req upstream.ListRequest) (upstream.List, error)
}

// List is a tags/list or referrers answer. The cache fetches each whole
// list once per ListTTL and answers every page of it locally, so distinct
// ?n= and ?last= queries cost no upstream request and no memory of their
// own.
type List struct {
	ContentType string
	Body        []byte
	// Next is the query of the next page (n and last), nil on the last.
	Next url.Values
	// Filtered names the filters applied (referrers' artifactType).
	Filtered string
	Result   Result
}

// maxListPages bounds how many upstream pages one list is assembled from.
const maxListPages = 100

// listStaleFor is how long past ListTTL a list is kept to answer while the
// upstream fails.
const listStaleFor = time.Hour

// Tags answers GET /v2/<repo>/tags/list with the client's n and last.
func (c *Cache) Tags(ctx context.Context, repo ref.Repo, query url.Values) (*List, error) {
	n, err := pageSize(query)
	if err != nil {
		return nil, err
	}
	e, res, err := c.list(ctx, repo, upstream.ListRequest{Kind: upstream.Tags}, "tags")
	if err != nil {
		return nil, err
	}
	tags := e.tags
	if last := query.Get("last"); last != "" {
		i, found := slices.BinarySearch(tags, last)
		if found {
			i++
		}
		tags = tags[i:]
	}
	l := &List{ContentType: "application/json", Result: res}
	if n >= 0 && n < len(tags) {
		tags = tags[:n]
		if n > 0 {
			l.Next = url.Values{"n": {strconv.Itoa(n)}, "last": {tags[n-1]}}
		}
	}
	l.Body, _ = json.Marshal(struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{e.name, tags})
	return l, nil
}

// pageSize reads ?n=: -1 when absent.
func pageSize(query url.Values) (int, error) {
	v := query.Get("n")
	if v == "" {
		return -1, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, &regerr.Error{Kind: regerr.Invalid, Message: "n must be a non-negative integer"}
	}
	return n, nil
}

// Referrers answers GET /v2/<repo>/referrers/<digest>[?artifactType=].
func (c *Cache) Referrers(ctx context.Context, repo ref.Repo, d digest.Digest, query url.Values) (*List, error) {
	e, res, err := c.list(ctx, repo, upstream.ListRequest{Kind: upstream.Referrers, Digest: d}, "referrers/"+d.String())
	if err != nil {
		return nil, err
	}
	l := &List{ContentType: ocispec.MediaTypeImageIndex, Body: e.body, Result: res}
	if at := query.Get("artifactType"); at != "" {
		idx := e.index
		idx.Manifests = slices.DeleteFunc(slices.Clone(idx.Manifests), func(d ocispec.Descriptor) bool { return d.ArtifactType != at })
		l.Body, _ = json.Marshal(idx)
		l.Filtered = "artifactType"
	}
	return l, nil
}

// list returns the whole list of one kind for repo: from memory within
// ListTTL, else fetched (every page of it) once for all the clients asking.
func (c *Cache) list(ctx context.Context, repo ref.Repo, req upstream.ListRequest, what string) (*listEntry, Result, error) {
	src, err := c.source(repo)
	if err != nil {
		return nil, "", err
	}
	key := repo.String() + "/" + what
	e, age, have := c.lists.get(key, c.now())
	if have && age < c.opt.ListTTL {
		return e, Hit, e.err
	}
	v, err, _ := c.flow.Do("l:"+key, func() (any, error) {
		fctx, cancel := c.detach(ctx, c.opt.FetchTimeout)
		defer cancel()
		e, err := fetchList(fctx, src, repo, req)
		if err != nil && !regerr.Is(err, regerr.NotFound) {
			return nil, err
		}
		// "No such list" is an answer too, reused like a list.
		e.err = err
		c.lists.add(key, e, c.now())
		return e, nil
	})
	if err != nil {
		if have && age < c.opt.ListTTL+listStaleFor {
			c.m.StaleServed.WithLabelValues(repo.Registry(), "error").Inc()
			return e, Stale, e.err
		}
		return nil, "", err
	}
	e = v.(*listEntry)
	return e, Miss, e.err
}

// fetchList assembles a whole list from the upstream's pages.
func fetchList(ctx context.Context, src listSource, repo ref.Repo, req upstream.ListRequest) (*listEntry, error) {
	e := &listEntry{}
	var total int
	for page := 0; ; page++ {
		l, err := src.List(ctx, repo, req)
		if err != nil {
			return &listEntry{}, err
		}
		total += len(l.Body)
		if total > upstream.MaxListSize {
			return nil, &regerr.Error{Kind: regerr.TooLarge, Registry: repo.Registry(), Op: "GET list", Repo: repo.Path(),
				Message: "the list is over the size limit"}
		}
		if err := e.merge(req.Kind, l.Body); err != nil {
			return nil, &regerr.Error{Kind: regerr.BadContent, Registry: repo.Registry(), Op: "GET list", Repo: repo.Path(),
				Message: "the upstream's list is not valid JSON", Err: err}
		}
		next := nextQuery(l.Link)
		if next == nil || page+1 >= maxListPages {
			break
		}
		req.Query = next
	}
	e.finish(req.Kind)
	return e, nil
}

// nextQuery reads the query of a Link header's next page.
func nextQuery(link string) url.Values {
	lt, gt := strings.IndexByte(link, '<'), strings.IndexByte(link, '>')
	if lt < 0 || gt < lt {
		return nil
	}
	u, err := url.Parse(link[lt+1 : gt])
	if err != nil || u.RawQuery == "" {
		return nil
	}
	return u.Query()
}

// listEntry is a whole list, as kept in memory.
type listEntry struct {
	name  string
	tags  []string             // Tags: sorted, unique
	index ocispec.Index        // Referrers
	body  []byte               // Referrers: the unfiltered answer
	err   error                // a cached "not found"
	seen  map[string]struct{}  // while merging pages
	refs  []ocispec.Descriptor // while merging pages
}

func (e *listEntry) merge(kind upstream.ListKind, body []byte) error {
	if kind == upstream.Tags {
		var doc struct {
			Name string   `json:"name"`
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			return err
		}
		e.name = doc.Name
		e.tags = append(e.tags, doc.Tags...)
		return nil
	}
	var idx ocispec.Index
	if err := json.Unmarshal(body, &idx); err != nil {
		return err
	}
	if e.refs == nil {
		e.index = idx
	}
	e.refs = append(e.refs, idx.Manifests...)
	return nil
}

func (e *listEntry) finish(kind upstream.ListKind) {
	if kind == upstream.Tags {
		slices.Sort(e.tags)
		e.tags = slices.Compact(e.tags)
		return
	}
	e.index.Manifests = e.refs
	if e.index.Manifests == nil {
		e.index.Manifests = []ocispec.Descriptor{}
	}
	e.index.MediaType = ocispec.MediaTypeImageIndex
	e.index.SchemaVersion = 2
	e.body, _ = json.Marshal(e.index)
	e.refs = nil
}

// size is what the entry costs in memory, roughly.
func (e *listEntry) size() int64 {
	n := int64(len(e.name) + len(e.body) + 64)
	for _, t := range e.tags {
		n += int64(len(t)) + 16
	}
	return n + int64(len(e.index.Manifests))*256
}

// listCache is an LRU of lists bounded by bytes, not entries: one list can
// be megabytes.
type listCache struct {
	max    int64
	maxAge time.Duration // past it an entry is dropped

	mu    sync.Mutex
	used  int64
	order *list.List // of *listItem, most recent first
	items map[string]*list.Element
}

type listItem struct {
	key     string
	e       *listEntry
	size    int64
	fetched time.Time
}

func newListCache(max int64, maxAge time.Duration) *listCache {
	if max <= 0 {
		max = 64 << 20
	}
	return &listCache{max: max, maxAge: maxAge, order: list.New(), items: map[string]*list.Element{}}
}

// get returns the entry for key and its age. Entries past their stale
// window are dropped here, so none outlives it by more than one lookup.
func (lc *listCache) get(key string, now time.Time) (*listEntry, time.Duration, bool) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	el, ok := lc.items[key]
	if !ok {
		return nil, 0, false
	}
	it := el.Value.(*listItem)
	age := now.Sub(it.fetched)
	if age > lc.maxAge {
		lc.removeLocked(el)
		return nil, 0, false
	}
	lc.order.MoveToFront(el)
	return it.e, age, true
}

func (lc *listCache) add(key string, e *listEntry, now time.Time) {
	size := e.size()
	if size > lc.max {
		return
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if el, ok := lc.items[key]; ok {
		lc.removeLocked(el)
	}
	lc.items[key] = lc.order.PushFront(&listItem{key: key, e: e, size: size, fetched: now})
	lc.used += size
	for lc.used > lc.max {
		lc.removeLocked(lc.order.Back())
	}
}

func (lc *listCache) removeLocked(el *list.Element) {
	it := el.Value.(*listItem)
	lc.order.Remove(el)
	delete(lc.items, it.key)
	lc.used -= it.size
}

// bytes is the memory the cache holds, for tests and metrics.
func (lc *listCache) bytes() int64 {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.used
}

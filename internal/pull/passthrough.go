package pull

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"time"
)

// List is a tags/list or referrers answer, passed through from the upstream
// and reused for a short time.
type List struct {
	Status      int
	ContentType string
	Link        string // upstream Link header, for pagination
	Body        []byte
	Result      Result
}

type listEntry struct {
	list    List
	fetched time.Time
}

// maxListBody bounds a tag list or referrers index read into memory.
const maxListBody = 16 << 20

// Tags answers GET /v2/<repo>/tags/list with the client's n and last.
func (c *Cache) Tags(ctx context.Context, registry, repo string, query url.Values) (*List, error) {
	q := url.Values{}
	for _, k := range []string{"n", "last"} {
		if v := query.Get(k); v != "" {
			q.Set(k, v)
		}
	}
	return c.list(ctx, registry, repo, "tags/list", q)
}

// Referrers answers GET /v2/<repo>/referrers/<digest>[?artifactType=].
func (c *Cache) Referrers(ctx context.Context, registry, repo, dgst string, query url.Values) (*List, error) {
	q := url.Values{}
	if v := query.Get("artifactType"); v != "" {
		q.Set("artifactType", v)
	}
	return c.list(ctx, registry, repo, "referrers/"+dgst, q)
}

func (c *Cache) list(ctx context.Context, registry, repo, suffix string, q url.Values) (*List, error) {
	up, err := c.upstream(registry)
	if err != nil {
		return nil, err
	}
	key := registry + "/" + repo + "/" + suffix + "?" + q.Encode()
	e, have := c.lists.Get(key)
	if have && c.now().Sub(e.fetched) < c.opt.ListTTL {
		l := e.list
		l.Result = Hit
		return &l, nil
	}
	v, err, _ := c.flow.Do("l:"+key, func() (any, error) {
		fctx, cancel := c.detach(ctx, c.opt.FetchTimeout)
		defer cancel()
		h := http.Header{}
		if len(suffix) > 9 && suffix[:9] == "referrers" {
			h.Set("Accept", "application/vnd.oci.image.index.v1+json")
		}
		resp, err := up.Do(fctx, http.MethodGet, repo, suffix, q, h)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxListBody))
		if err != nil {
			return nil, err
		}
		l := List{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Link: resp.Header.Get("Link"), Body: body, Result: Miss}
		c.lists.Add(key, listEntry{list: l, fetched: c.now()})
		return &l, nil
	})
	if err != nil {
		if have {
			c.m.StaleServed.WithLabelValues(registry, "error").Inc()
			l := e.list
			l.Result = Stale
			return &l, nil
		}
		return nil, err
	}
	l := *v.(*List)
	return &l, nil
}

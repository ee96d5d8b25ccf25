package upstream

import (
	"container/list"
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/singleflight"
)

// defaultScopeCacheSize bounds how many repositories keep an authenticated
// transport (and so a token) at once. A token is a few hundred bytes; a CI
// fleet pulls from hundreds of repositories, not tens of thousands.
const defaultScopeCacheSize = 4096

// scopeCreateTimeout bounds the ping + token exchange that builds a
// transport. It runs detached from the first caller's context so that one
// impatient caller cannot fail the others waiting on the same creation.
const scopeCreateTimeout = 30 * time.Second

// scopeCache holds one authenticated transport per repository, for the scope
// "repository:<repo>:pull".
//
// transport.NewWithContext pings /v2/ and, for Bearer registries, fetches a
// token on every call; it does not retry. The transport it returns reuses the
// token and refreshes it itself when the registry answers 401, so caching the
// transport is what makes tokens live until they expire. Failures are not
// cached: an upstream that is down now may be up on the next request.
type scopeCache struct {
	reg   name.Registry
	auth  authn.Authenticator
	inner http.RoundTripper
	max   int

	group singleflight.Group

	mu    sync.Mutex
	order *list.List // of *scopeEntry, most recently used first
	items map[string]*list.Element
}

type scopeEntry struct {
	repo string
	rt   http.RoundTripper
}

func newScopeCache(reg name.Registry, auth authn.Authenticator, inner http.RoundTripper, size int) *scopeCache {
	if auth == nil {
		auth = authn.Anonymous
	}
	if size <= 0 {
		size = defaultScopeCacheSize
	}
	return &scopeCache{
		reg:   reg,
		auth:  auth,
		inner: inner,
		max:   size,
		order: list.New(),
		items: make(map[string]*list.Element),
	}
}

// transport returns the authenticated transport for repo, creating it on
// first use. Concurrent first uses share one creation.
func (c *scopeCache) transport(ctx context.Context, repo string) (http.RoundTripper, error) {
	if rt, ok := c.lookup(repo); ok {
		return rt, nil
	}
	ch := c.group.DoChan(repo, func() (any, error) {
		if rt, ok := c.lookup(repo); ok {
			return rt, nil
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), scopeCreateTimeout)
		defer cancel()
		scope := "repository:" + repo + ":" + transport.PullScope
		rt, err := transport.NewWithContext(cctx, c.reg, c.auth, c.inner, []string{scope})
		if err != nil {
			return nil, err
		}
		c.add(repo, rt)
		return rt, nil
	})
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(http.RoundTripper), nil
	}
}

func (c *scopeCache) lookup(repo string) (http.RoundTripper, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[repo]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*scopeEntry).rt, true
}

func (c *scopeCache) add(repo string, rt http.RoundTripper) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[repo]; ok {
		el.Value.(*scopeEntry).rt = rt
		c.order.MoveToFront(el)
		return
	}
	c.items[repo] = c.order.PushFront(&scopeEntry{repo: repo, rt: rt})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.items, last.Value.(*scopeEntry).repo)
	}
}

// len is the number of cached transports, for tests.
func (c *scopeCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

package pull

import (
	"context"
	"errors"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/store"
)

// BlobRedirect returns a short-lived URL at which the client can fetch blob
// d (method GET or HEAD) from the store itself, so its bytes do not pass
// through regcache (storage.s3.redirect). It does so only for committed
// content that belongs to repo, the same check Blob makes. It returns ""
// when the blob cannot be redirected: the store has no such URLs, or the
// blob is not committed (a download in flight is streamed by Blob).
//
// The URL carries a signature: it must not be logged.
func (c *Cache) BlobRedirect(ctx context.Context, repo ref.Repo, d digest.Digest, method string) (string, Result, error) {
	rd, ok := c.opt.Store.(store.Redirector)
	if !ok {
		return "", "", nil
	}
	src, err := c.source(repo)
	if err != nil {
		return "", "", err
	}
	// The store's word that the blob is committed: a URL to a missing
	// object would be a 404 from the object store, which clients take as
	// a failed pull rather than a reason to ask again.
	if _, err := c.opt.Store.Stat(ctx, d); errors.Is(err, store.ErrNotFound) {
		return "", "", nil
	} else if err != nil {
		return "", "", c.storeError("stat blob", err)
	}
	res, err := c.ensureLinked(ctx, src, repo, d)
	if err != nil {
		return "", "", err
	}
	u, err := rd.BlobURL(ctx, d, method, c.opt.RedirectExpiry)
	if err != nil {
		return "", "", c.storeError("sign blob URL", err)
	}
	return u, res, nil
}

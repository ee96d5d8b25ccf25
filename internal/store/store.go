// Package store is regcache's content store: immutable, content-addressed
// blobs (layers, configs and manifests alike) plus small mutable metadata
// records such as tag→digest answers.
//
// The Store interface is what a backend implements; FS is the filesystem
// backend (the default) and S3 keeps content in an S3 bucket. A backend must
// never make content visible before its digest has been verified, and must
// survive a crash at any point without ever exposing a partial blob.
// Optional features are small interfaces a backend may add: Collector
// (size-bounded eviction) and Redirector (direct URLs for clients).
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// ErrNotFound is returned for content or metadata that is not stored.
var ErrNotFound = errors.New("not found in store")

// ErrDigestMismatch is returned by Commit when the bytes written do not hash
// to the expected digest (or the size is wrong). The content is discarded.
var ErrDigestMismatch = errors.New("content does not match its digest")

// Store holds cached content and metadata.
type Store interface {
	// Stat returns the size of committed content.
	Stat(ctx context.Context, d digest.Digest) (int64, error)
	// Open returns committed content for reading. The filesystem backend
	// returns an *os.File inside, so http.ServeContent can use sendfile.
	Open(ctx context.Context, d digest.Digest) (Content, error)
	// Create starts writing content that must hash to d. size is the
	// expected size, or -1 when unknown.
	Create(ctx context.Context, d digest.Digest, size int64) (Writer, error)
	// Delete removes content; deleting absent content is not an error.
	Delete(ctx context.Context, d digest.Digest) error

	// GetMeta returns a metadata record, or ErrNotFound.
	GetMeta(ctx context.Context, key string) ([]byte, error)
	// PutMeta atomically replaces a metadata record.
	PutMeta(ctx context.Context, key string, value []byte) error
	// DeleteMeta removes a metadata record; absent is not an error.
	DeleteMeta(ctx context.Context, key string) error
}

// Content is committed content opened for reading.
type Content interface {
	io.ReadSeekCloser
	Size() int64
}

// Writer receives content for a digest. Nothing is visible to Open or Stat
// until Commit returns nil.
//
// A Writer that keeps the bytes in a local file (FS) also implements
// io.ReaderAt, so clients can be served from an in-flight download without a
// second copy; one that does not (S3, which streams parts to the bucket)
// leaves it to the caller to keep in-flight bytes where it can read them.
type Writer interface {
	io.Writer
	// Written is the number of bytes written so far.
	Written() int64
	// Verify checks what was written against the digest and size, without
	// publishing it; ErrDigestMismatch on a mismatch. It lets a caller hand
	// verified bytes to waiting clients before the slower Commit.
	Verify(ctx context.Context) error
	// Commit verifies the content (unless Verify already did), makes it
	// durable and publishes it. On mismatch it returns ErrDigestMismatch and
	// the content is dropped.
	Commit(ctx context.Context) error
	// Close releases the writer. Without a successful Commit the written
	// bytes are discarded. ReadAt, where implemented, keeps working until
	// Close.
	Close() error
}

// Collector is a store that keeps itself under a size by evicting the least
// recently used content.
type Collector interface {
	// Collect evicts least recently used blobs until the store holds at
	// most low bytes, if it holds more than high. Blobs used recently are
	// kept even above low, so an image being pulled is never cut in half.
	Collect(ctx context.Context, high, low int64, now time.Time) (GCStats, error)
}

// Redirector is a store whose committed content clients can fetch directly,
// so blob bytes need not pass through regcache (storage.s3.redirect).
type Redirector interface {
	// BlobURL returns a URL that answers method (GET or HEAD) for committed
	// content d until expiry has passed. It does not check that d is
	// stored; the caller has just found it. The URL carries a signature
	// (and, with temporary credentials, a session token): treat it as a
	// short-lived secret, never log it.
	BlobURL(ctx context.Context, d digest.Digest, method string, expiry time.Duration) (string, error)
}

// checkMetaKey rejects keys that are not slash-separated, non-empty, plain
// segments. Keys come from validated registry, repository and tag names,
// but are checked again so a bad key can never escape the root or alias
// another record ("a//b" and "a/b" are one object in some backends).
func checkMetaKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") {
		return fmt.Errorf("invalid metadata key %q", key)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." || strings.ContainsRune(seg, 0) {
			return fmt.Errorf("invalid metadata key %q", key)
		}
	}
	return nil
}

// Package store is regcache's content store: immutable, content-addressed
// blobs (layers, configs and manifests alike) plus small mutable metadata
// records such as tag→digest answers. paths.go draws the layout every
// backend keeps.
//
// The Store interface is what a backend implements; FS is the filesystem
// backend (the default) and S3 keeps content in an S3 bucket. Content is
// verified once, where it enters regcache (the upstream package's readers
// hash every byte as it is read); a backend must never make content visible
// before its writer's Commit, and must survive a crash at any point without
// exposing a partial blob. Optional features are small interfaces a backend
// may add: Collector (size-bounded eviction) and Redirector (direct URLs for
// clients).
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

// ErrSizeMismatch is returned by Commit when the bytes written are not the
// size given to Create. The content is discarded.
var ErrSizeMismatch = errors.New("content is not the expected size")

// ErrNoSpace is returned when the store has no room for content: by Create
// when the announced size cannot fit, or by Write when the disk fills. The
// caller can still stream the content through, uncached.
var ErrNoSpace = errors.New("no space left in the store")

// Store holds cached content and metadata.
type Store interface {
	// Stat returns the size of committed content.
	Stat(ctx context.Context, d digest.Digest) (int64, error)
	// Open returns committed content for reading. The filesystem backend
	// returns a *File, so http.ServeContent can use sendfile.
	Open(ctx context.Context, d digest.Digest) (Content, error)
	// Create starts writing content for d. size is the expected size, or
	// -1 when unknown.
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
// A writer that keeps the bytes in a local file (FS) may also implement
// io.ReaderAt, so that clients who fall behind a download in flight read
// them back from it; for a writer that does not (S3, which streams parts to
// the bucket), the caller spools them itself.
type Writer interface {
	io.Writer
	// Commit makes the content durable and publishes it under its digest.
	// The caller must have verified the bytes against the digest; Commit
	// checks the size given to Create (ErrSizeMismatch).
	Commit(ctx context.Context) error
	// Close releases the writer. Without a successful Commit the written
	// bytes are discarded. ReadAt, where implemented, keeps working until
	// Close.
	Close() error
}

// Collector keeps a store under a size bound, evicting the least recently
// used content.
type Collector interface {
	// Collect evicts least recently used blobs until the store holds at
	// most low bytes, if it holds more than high. Blobs used recently are
	// kept even above low, so an image being pulled is never cut in half.
	Collect(ctx context.Context, high, low int64, now time.Time) (GCStats, error)
	// Size is the store's size as last known, in bytes.
	Size() int64
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
// segments. Keys come from paths.go, built from validated names, but are
// checked again so a bad key can never escape the root or alias another
// record ("a//b" and "a/b" are one object in some backends).
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

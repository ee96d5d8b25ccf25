// Package store is regcache's content store: immutable, content-addressed
// blobs (layers, configs and manifests alike) plus small mutable metadata
// records such as tag→digest answers.
//
// The Store interface is what a backend implements; FS is the filesystem
// backend. A backend must never make content visible before its digest has
// been verified, and must survive a crash at any point without ever exposing
// a partial blob.
package store

import (
	"context"
	"errors"
	"io"

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
// A Writer also reads back what it has been given so far (ReadAt), so that
// clients can be served from an in-flight download; a backend without local
// files (S3) spools to local disk for that.
type Writer interface {
	io.Writer
	io.ReaderAt
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
	// bytes are discarded. ReadAt keeps working until Close.
	Close() error
}

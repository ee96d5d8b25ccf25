package store

import (
	"errors"
	"fmt"
	"hash"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
)

// digestCheck hashes what a writer is given and checks it against the
// digest and size the content must have. Every backend's writer embeds one,
// so "verified" means the same thing whatever holds the bytes.
type digestCheck struct {
	want     digest.Digest
	size     int64 // -1 when unknown
	hash     hash.Hash
	written  atomic.Int64
	verified bool
}

func (c *digestCheck) init(d digest.Digest, size int64) {
	c.want, c.size, c.hash = d, size, d.Algorithm().Hash()
}

// add counts and hashes bytes the writer accepted.
func (c *digestCheck) add(p []byte) {
	c.hash.Write(p)
	c.written.Add(int64(len(p)))
}

// Written is the number of bytes written so far (Writer.Written).
func (c *digestCheck) Written() int64 { return c.written.Load() }

// check verifies once; after success no more bytes may be added.
func (c *digestCheck) check() error {
	if c.verified {
		return nil
	}
	got := digest.NewDigestFromBytes(c.want.Algorithm(), c.hash.Sum(nil))
	n := c.written.Load()
	if got != c.want || (c.size >= 0 && n != c.size) {
		return fmt.Errorf("%w: want %s (%d bytes), got %s (%d bytes)", ErrDigestMismatch, c.want, c.size, got, n)
	}
	c.verified = true
	return nil
}

var (
	errWriteDone  = errors.New("store: write after verify, commit or close")
	errVerifyDone = errors.New("store: verify after commit or close")
)

// Package storetest is an in-memory store.Store for the tests of the
// packages above the store: small, exact, and it counts what was asked of
// it. It is not a backend; internal/store's own tests cover the real ones.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/store"
)

// Mem is an in-memory store.Store. The zero value is not usable; use New.
type Mem struct {
	mu    sync.Mutex
	blobs map[digest.Digest][]byte
	meta  map[string][]byte
	// Full makes Create and Write fail with store.ErrNoSpace.
	Full bool
	// Opens counts Open calls per digest.
	Opens map[digest.Digest]int
}

// New returns an empty Mem.
func New() *Mem {
	return &Mem{blobs: map[digest.Digest][]byte{}, meta: map[string][]byte{}, Opens: map[digest.Digest]int{}}
}

// SetFull makes the store refuse new content, or take it again.
func (m *Mem) SetFull(full bool) {
	m.mu.Lock()
	m.Full = full
	m.mu.Unlock()
}

// Blob returns committed content, for assertions.
func (m *Mem) Blob(d digest.Digest) ([]byte, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[d]
	return b, ok
}

func (m *Mem) Stat(_ context.Context, d digest.Digest) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[d]
	if !ok {
		return 0, store.ErrNotFound
	}
	return int64(len(b)), nil
}

func (m *Mem) Open(_ context.Context, d digest.Digest) (store.Content, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Opens[d]++
	b, ok := m.blobs[d]
	if !ok {
		return nil, store.ErrNotFound
	}
	return content{bytes.NewReader(b)}, nil
}

type content struct{ *bytes.Reader }

func (c content) Close() error { return nil }

func (m *Mem) Create(_ context.Context, d digest.Digest, size int64) (store.Writer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Full {
		return nil, fmt.Errorf("%w: test store is full", store.ErrNoSpace)
	}
	return &writer{m: m, d: d, size: size}, nil
}

func (m *Mem) Delete(_ context.Context, d digest.Digest) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.blobs, d)
	return nil
}

func (m *Mem) GetMeta(_ context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.meta[key]
	if !ok {
		return nil, store.ErrNotFound
	}
	return append([]byte(nil), v...), nil
}

func (m *Mem) PutMeta(_ context.Context, key string, value []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.meta[key] = append([]byte(nil), value...)
	return nil
}

func (m *Mem) DeleteMeta(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.meta, key)
	return nil
}

type writer struct {
	m      *Mem
	d      digest.Digest
	size   int64
	buf    bytes.Buffer
	done   bool
	closed bool
}

func (w *writer) Write(p []byte) (int, error) {
	w.m.mu.Lock()
	full := w.m.Full
	w.m.mu.Unlock()
	if full {
		return 0, fmt.Errorf("%w: test store is full", store.ErrNoSpace)
	}
	if w.done || w.closed {
		return 0, errors.New("write after commit or close")
	}
	return w.buf.Write(p)
}

func (w *writer) Commit(context.Context) error {
	if w.done || w.closed {
		return errors.New("commit after commit or close")
	}
	if w.size >= 0 && int64(w.buf.Len()) != w.size {
		return store.ErrSizeMismatch
	}
	w.done = true
	w.m.mu.Lock()
	w.m.blobs[w.d] = bytes.Clone(w.buf.Bytes())
	w.m.mu.Unlock()
	return nil
}

func (w *writer) Close() error {
	w.closed = true
	return nil
}

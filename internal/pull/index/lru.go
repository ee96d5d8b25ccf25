package index

import lru2 "github.com/hashicorp/golang-lru/v2"

// lru is a size-bounded, concurrency-safe map of hot entries in front of
// the store, so hot tags and manifests are answered without touching disk.
type lru[K comparable, V any] struct{ c *lru2.Cache[K, V] }

func newLRU[K comparable, V any](size int) *lru[K, V] {
	c, err := lru2.New[K, V](size)
	if err != nil {
		panic(err) // only for size <= 0, a programming error
	}
	return &lru[K, V]{c: c}
}

func (l *lru[K, V]) Get(k K) (V, bool) { return l.c.Get(k) }
func (l *lru[K, V]) Add(k K, v V)      { l.c.Add(k, v) }
func (l *lru[K, V]) Remove(k K)        { l.c.Remove(k) }

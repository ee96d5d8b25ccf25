// Package topn finds the most frequent keys of an unbounded stream in
// bounded memory, with the Space-Saving algorithm (Metwally, Agrawal and
// El Abbadi, "Efficient Computation of Frequent and Top-k Elements in Data
// Streams", 2005).
//
// A Counter keeps at most its capacity of keys. A new key, when it is full,
// takes the place of the key with the lowest count and inherits that count
// (plus one): its count may be too high by at most what it inherited, which
// Item.Overcount reports, and never too low. Any key seen more than
// total/capacity times is certain to be kept. So a capacity a few times
// larger than the number of keys shown makes the top of the list exact in
// practice, whatever the number of distinct keys.
//
// The counts live in a min-heap indexed by a map, so Add costs O(log
// capacity) and, once the counter holds its capacity of keys, allocates
// nothing.
package topn

import (
	"sort"
	"sync"
)

// Counter counts keys; safe for concurrent use.
type Counter[K comparable] struct {
	mu   sync.Mutex
	max  int
	seq  uint64    // Adds so far, to order ties by first sight
	heap []slot[K] // a min-heap by (count, newer first)
	at   map[K]int // key → index in heap
}

type slot[K comparable] struct {
	key       K
	count     uint64
	overcount uint64 // the count inherited from the key it replaced
	first     uint64 // seq when the key took this slot
}

// Item is one counted key.
type Item[K comparable] struct {
	Key   K
	Count uint64
	// Overcount bounds how much Count may exceed the key's true count:
	// the true count is between Count-Overcount and Count.
	Overcount uint64
}

// New returns a Counter that keeps at most capacity keys (at least 1). Its
// memory grows with the keys it holds, not allocated up front: in a server
// that pulls few images, a full-size counter would be a large part of the
// live heap, which sets how often the garbage collector runs.
func New[K comparable](capacity int) *Counter[K] {
	return &Counter[K]{max: max(capacity, 1), at: map[K]int{}}
}

// Add counts one occurrence of k.
func (c *Counter[K]) Add(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	if i, ok := c.at[k]; ok {
		c.heap[i].count++
		c.down(i)
		return
	}
	if len(c.heap) < c.max {
		c.heap = append(c.heap, slot[K]{key: k, count: 1, first: c.seq})
		c.at[k] = len(c.heap) - 1
		c.up(len(c.heap) - 1)
		return
	}
	// Full: k replaces the least counted key and inherits its count.
	least := &c.heap[0]
	delete(c.at, least.key)
	*least = slot[K]{key: k, count: least.count + 1, overcount: least.count, first: c.seq}
	c.at[k] = 0
	c.down(0)
}

// Top returns up to n keys, the most counted first; ties go to the key
// counted first.
func (c *Counter[K]) Top(n int) []Item[K] {
	c.mu.Lock()
	s := append([]slot[K](nil), c.heap...)
	c.mu.Unlock()
	sort.Slice(s, func(i, j int) bool { return c.less(s[j], s[i]) })
	if n < len(s) {
		s = s[:max(n, 0)]
	}
	out := make([]Item[K], len(s))
	for i, e := range s {
		out[i] = Item[K]{Key: e.key, Count: e.count, Overcount: e.overcount}
	}
	return out
}

// Len is the number of keys held.
func (c *Counter[K]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.heap)
}

// less orders the heap: the lowest count at the root, and among equal
// counts the key that arrived last, so the one evicted is the newest of
// the least counted and the older keys keep their place.
func (c *Counter[K]) less(a, b slot[K]) bool {
	if a.count != b.count {
		return a.count < b.count
	}
	return a.first > b.first
}

func (c *Counter[K]) swap(i, j int) {
	c.heap[i], c.heap[j] = c.heap[j], c.heap[i]
	c.at[c.heap[i].key] = i
	c.at[c.heap[j].key] = j
}

func (c *Counter[K]) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if !c.less(c.heap[i], c.heap[parent]) {
			return
		}
		c.swap(i, parent)
		i = parent
	}
}

func (c *Counter[K]) down(i int) {
	for {
		smallest := i
		for _, child := range [2]int{2*i + 1, 2*i + 2} {
			if child < len(c.heap) && c.less(c.heap[child], c.heap[smallest]) {
				smallest = child
			}
		}
		if smallest == i {
			return
		}
		c.swap(i, smallest)
		i = smallest
	}
}

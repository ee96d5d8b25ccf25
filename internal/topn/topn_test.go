package topn

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

func TestTopOrder(t *testing.T) {
	for _, tc := range []struct {
		name     string
		capacity int
		stream   string // one key per byte
		n        int
		want     string // keys, most counted first
		counts   []uint64
	}{
		{"empty", 4, "", 3, "", nil},
		{"exact below capacity", 4, "abacabca", 4, "abc", []uint64{4, 2, 2}},
		{"ties go to the key seen first", 4, "bcaabc", 4, "bca", []uint64{2, 2, 2}},
		{"n cuts the list", 4, "aaabbc", 2, "ab", []uint64{3, 2}},
		{"n of zero", 4, "aaabbc", 0, "", nil},
		{"a newcomer inherits the least count", 2, "aabc", 2, "ac", []uint64{2, 2}},
		{"a heavy hitter survives churn", 3, "xaxbxcxdxexf", 1, "x", []uint64{6}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New[byte](tc.capacity)
			for i := range len(tc.stream) {
				c.Add(tc.stream[i])
			}
			got := c.Top(tc.n)
			var keys string
			var counts []uint64
			for _, it := range got {
				keys += string(it.Key)
				counts = append(counts, it.Count)
			}
			if keys != tc.want || fmt.Sprint(counts) != fmt.Sprint(tc.counts) {
				t.Errorf("Top(%d) = %q %v, want %q %v", tc.n, keys, counts, tc.want, tc.counts)
			}
			if c.Len() > tc.capacity {
				t.Errorf("holds %d keys, capacity %d", c.Len(), tc.capacity)
			}
		})
	}
}

// TestBoundedUnderManyKeys: however many distinct keys arrive, the counter
// holds its capacity, the keys seen more than total/capacity times come out
// on top in the right order, and every reported count brackets the true
// one.
func TestBoundedUnderManyKeys(t *testing.T) {
	// 21,800 adds over 128 slots: a key seen more than 171 times is kept,
	// and no count is more than 171 too high.
	const capacity = 128
	heavy := map[string]int{"library/node:22": 900, "library/alpine:3.20": 600, "library/python:3.12": 300}
	var stream []string
	for k, n := range heavy {
		for range n {
			stream = append(stream, k)
		}
	}
	for i := range 20_000 {
		stream = append(stream, fmt.Sprintf("noise/%d:latest", i))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(stream), func(i, j int) { stream[i], stream[j] = stream[j], stream[i] })
	truth := map[string]uint64{}
	c := New[string](capacity)
	for _, k := range stream {
		c.Add(k)
		truth[k]++
	}
	if c.Len() != capacity {
		t.Fatalf("holds %d keys, want %d", c.Len(), capacity)
	}
	top := c.Top(capacity)
	for i, want := range []string{"library/node:22", "library/alpine:3.20", "library/python:3.12"} {
		if top[i].Key != want {
			t.Errorf("Top[%d] = %s, want %s (%v)", i, top[i].Key, want, top[:3])
		}
	}
	for _, it := range top {
		if it.Overcount > uint64(len(stream)/capacity) {
			t.Errorf("%s: overcount %d, more than total/capacity", it.Key, it.Overcount)
		}
		if it.Count < truth[it.Key] || it.Count-it.Overcount > truth[it.Key] {
			t.Errorf("%s: count %d overcount %d, true count %d", it.Key, it.Count, it.Overcount, truth[it.Key])
		}
	}
}

// TestAddAllocatesNothingWhenFull: Add runs on every manifest request by
// tag, so once the counter is full it must not allocate, for known and new
// keys alike.
func TestAddAllocatesNothingWhenFull(t *testing.T) {
	type key struct{ repo, tag string }
	keys := make([]key, 1000)
	for i := range keys {
		keys[i] = key{"library/app", fmt.Sprint(i)}
	}
	c := New[key](64)
	for _, k := range keys {
		c.Add(k)
	}
	i := 0
	if n := testing.AllocsPerRun(1000, func() { c.Add(keys[i%len(keys)]); i++ }); n != 0 {
		t.Errorf("Add allocates %.1f times per call", n)
	}
}

func TestConcurrentAdds(t *testing.T) {
	c := New[int](16)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				c.Add(i % (g + 2))
			}
		})
	}
	wg.Wait()
	var total uint64
	for _, it := range c.Top(16) {
		total += it.Count
	}
	if total != 8000 {
		t.Errorf("counts add up to %d, want 8000", total)
	}
}

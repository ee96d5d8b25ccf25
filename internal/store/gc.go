package store

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// touchEvery bounds how often a read refreshes a blob's access time on
// disk: often enough for LRU eviction, rare enough to cost nothing on the
// hot path.
const touchEvery = 10 * time.Minute

// recentGrace protects blobs read or written this recently from eviction:
// they belong to pulls in progress, whose manifest was already served.
const recentGrace = 15 * time.Minute

// accessClock remembers when each blob's access time was last recorded, so
// a read records it at most once per touchEvery.
type accessClock struct {
	mu   sync.Mutex
	last map[string]time.Time
}

// due reports whether key's access time should be recorded now, and if so
// counts it as recorded.
func (a *accessClock) due(key string, now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last == nil {
		a.last = map[string]time.Time{}
	}
	if prev, ok := a.last[key]; ok && now.Sub(prev) < touchEvery {
		return false
	}
	if len(a.last) > 1_000_000 {
		// Forgetting only costs an extra write.
		a.last = map[string]time.Time{}
	}
	a.last[key] = now
	return true
}

// forget undoes due for a record that could not be written, so the next
// read tries again.
func (a *accessClock) forget(key string) {
	a.mu.Lock()
	delete(a.last, key)
	a.mu.Unlock()
}

// touch sets path's access time explicitly: relatime and noatime mounts do
// not keep it, and eviction needs it across restarts.
func (a *accessClock) touch(path string, now time.Time) {
	if !a.due(path, now) {
		return
	}
	if fi, err := os.Stat(path); err == nil {
		_ = os.Chtimes(path, now, fi.ModTime())
	}
}

// rewalkEvery bounds how long Collect trusts the running size instead of
// walking the store: the running size can drift (a commit racing a walk, two
// writers publishing one digest), and an hourly walk corrects it.
const rewalkEvery = time.Hour

// usage is the blob store's size as last measured by a walk, plus what was
// committed since, minus what was deleted. While it is under the high mark,
// Collect need not walk a store of millions of files every gc_interval.
type usage struct {
	bytes  atomic.Int64
	walked atomic.Int64 // unix nanoseconds of the last walk; 0 = never
}

func (u *usage) add(n int64) { u.bytes.Add(n) }

// GCStats reports one collection.
type GCStats struct {
	Blobs        int   // blobs on disk before (0 when not Walked)
	Bytes        int64 // bytes on disk before, measured or estimated
	Evicted      int
	EvictedBytes int64
	// Walked says the store was walked; otherwise Bytes is the running
	// size, which was under the high mark.
	Walked bool
}

// Collect evicts the least recently used blobs until the store holds at
// most low bytes, if it holds more than high. Blobs used within the last
// recentGrace are kept, so an image being pulled is never cut in half.
// Readers that have a blob open keep reading it: the file is unlinked, not
// truncated. Content can always be fetched again; metadata that names an
// evicted digest reads as "not cached".
func (s *FS) Collect(ctx context.Context, high, low int64, now time.Time) (GCStats, error) {
	return s.usage.collect(high, now, rewalkEvery, func() (GCStats, error) { return s.walkAndEvict(ctx, high, low, now) })
}

// collect runs walk, which measures the store and evicts, unless the
// running size, measured less than every ago, is at most high.
func (u *usage) collect(high int64, now time.Time, every time.Duration, walk func() (GCStats, error)) (GCStats, error) {
	if w := u.walked.Load(); w != 0 && now.Sub(time.Unix(0, w)) < every {
		if b := u.bytes.Load(); b <= high {
			return GCStats{Bytes: b}, nil
		}
	}
	st, err := walk()
	if err == nil {
		u.bytes.Store(st.Bytes - st.EvictedBytes)
		u.walked.Store(now.UnixNano())
	}
	return st, err
}

// lruEntry is one blob as eviction sees it.
type lruEntry struct {
	key   string // the backend's name for it
	size  int64
	atime time.Time // last use
}

// evictLRU removes blobs, least recently used first, until st.Bytes less
// what it removed is at most low. It stops at the first blob used within
// recentGrace of now, and skips those that remove refuses or fails on.
func evictLRU(st *GCStats, all []lruEntry, low int64, now time.Time, remove func(lruEntry) bool) {
	sort.Slice(all, func(i, j int) bool { return all[i].atime.Before(all[j].atime) })
	total := st.Bytes
	for _, e := range all {
		if total <= low {
			break
		}
		if now.Sub(e.atime) < recentGrace {
			break // everything after is newer still
		}
		if !remove(e) {
			continue
		}
		total -= e.size
		st.Evicted++
		st.EvictedBytes += e.size
	}
}

func (s *FS) walkAndEvict(ctx context.Context, high, low int64, now time.Time) (GCStats, error) {
	var all []lruEntry
	st := GCStats{Walked: true}
	err := filepath.WalkDir(filepath.Join(s.root, "blobs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		at := fi.ModTime()
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			if a := time.Unix(sys.Atim.Sec, sys.Atim.Nsec); a.After(at) {
				at = a
			}
		}
		all = append(all, lruEntry{p, fi.Size(), at})
		st.Blobs++
		st.Bytes += fi.Size()
		return nil
	})
	if err != nil {
		return st, err
	}
	if st.Bytes <= high {
		return st, nil
	}
	evictLRU(&st, all, low, now, func(e lruEntry) bool { return os.Remove(e.key) == nil })
	return st, nil
}

// Size implements Collector: the running size, exact after the last walk
// and kept up to date by commits and deletes since.
func (s *FS) Size() int64 { return s.usage.bytes.Load() }

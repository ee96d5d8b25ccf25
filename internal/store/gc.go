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

// accessClock remembers when each blob's access time was last written, so
// Open touches a file at most once per touchEvery.
type accessClock struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (a *accessClock) touch(path string, now time.Time) {
	a.mu.Lock()
	if a.last == nil {
		a.last = map[string]time.Time{}
	}
	prev, ok := a.last[path]
	if ok && now.Sub(prev) < touchEvery {
		a.mu.Unlock()
		return
	}
	if len(a.last) > 1_000_000 {
		// Forgetting only costs an extra Chtimes.
		a.last = map[string]time.Time{}
	}
	a.last[path] = now
	a.mu.Unlock()
	// The access time is set explicitly: relatime and noatime mounts do not
	// keep it, and eviction needs it across restarts.
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
	if w := s.usage.walked.Load(); w != 0 && now.Sub(time.Unix(0, w)) < rewalkEvery {
		if b := s.usage.bytes.Load(); b <= high {
			return GCStats{Bytes: b}, nil
		}
	}
	st, err := s.walkAndEvict(ctx, high, low, now)
	if err == nil {
		s.usage.bytes.Store(st.Bytes - st.EvictedBytes)
		s.usage.walked.Store(now.UnixNano())
	}
	return st, err
}

func (s *FS) walkAndEvict(ctx context.Context, high, low int64, now time.Time) (GCStats, error) {
	type entry struct {
		path  string
		size  int64
		atime time.Time
	}
	var all []entry
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
		all = append(all, entry{p, fi.Size(), at})
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
	sort.Slice(all, func(i, j int) bool { return all[i].atime.Before(all[j].atime) })
	total := st.Bytes
	for _, e := range all {
		if total <= low {
			break
		}
		if now.Sub(e.atime) < recentGrace {
			break // everything after is newer still
		}
		if err := os.Remove(e.path); err != nil {
			continue
		}
		total -= e.size
		st.Evicted++
		st.EvictedBytes += e.size
	}
	return st, nil
}

// Size implements Collector: the running size, exact after the last walk
// and kept up to date by commits and deletes since.
func (s *FS) Size() int64 { return s.usage.bytes.Load() }

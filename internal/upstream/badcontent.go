package upstream

import (
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// Bounds of a mirror's memory of bad content. An hour is long enough that a
// CI fleet retrying one broken layer does not download it from the same
// mirror again and again, and short enough that a mirror which fixed its
// storage is trusted again the same day.
const (
	badContentTTL = time.Hour
	badContentMax = 4096
)

// badContent remembers the digests a mirror answered with bytes that hash
// to something else. The breaker judges the mirror as a whole and opens only
// after several failures; this sends the next request for that one digest
// straight to the next source, so a client's first retry already succeeds.
type badContent struct {
	mu   sync.Mutex
	now  func() time.Time
	seen map[digest.Digest]time.Time // digest → when it was last served wrong
}

func newBadContent(now func() time.Time) *badContent {
	return &badContent{now: now, seen: map[digest.Digest]time.Time{}}
}

// add records that d was served wrong just now.
func (b *badContent) add(d digest.Digest) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if _, ok := b.seen[d]; !ok && len(b.seen) >= badContentMax {
		b.evictLocked(now)
	}
	b.seen[d] = now
}

// has reports whether d was served wrong within the last badContentTTL.
func (b *badContent) has(d digest.Digest) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	at, ok := b.seen[d]
	if ok && b.now().Sub(at) >= badContentTTL {
		delete(b.seen, d)
		return false
	}
	return ok
}

// size is the number of digests remembered, expired ones included.
func (b *badContent) size() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.seen)
}

// evictLocked makes room for one entry: expired entries go first, and if
// none has expired, the oldest. It runs only when the map is full, which
// takes thousands of distinct bad digests from one mirror.
func (b *badContent) evictLocked(now time.Time) {
	var oldest digest.Digest
	var oldestAt time.Time
	for d, at := range b.seen {
		if now.Sub(at) >= badContentTTL {
			delete(b.seen, d)
			continue
		}
		if oldest == "" || at.Before(oldestAt) {
			oldest, oldestAt = d, at
		}
	}
	if len(b.seen) >= badContentMax {
		delete(b.seen, oldest)
	}
}

package clientauth

import "time"

// expiring is a map whose entries lapse at their own deadlines and which
// never holds more than max entries. An insert into a full map first drops
// what has lapsed, then the entry closest to lapsing. Whoever chooses the
// keys (a client cycling addresses or user names) can push older entries
// out, but cannot make the map grow. It is not safe for concurrent use.
type expiring[K comparable, V any] struct {
	max     int
	entries map[K]expiringEntry[V]
}

type expiringEntry[V any] struct {
	v     V
	until time.Time
}

func newExpiring[K comparable, V any](max int) *expiring[K, V] {
	return &expiring[K, V]{max: max, entries: map[K]expiringEntry[V]{}}
}

// get returns k's value unless it is missing or has lapsed.
func (e *expiring[K, V]) get(k K, now time.Time) (V, bool) {
	en, ok := e.entries[k]
	if !ok || !now.Before(en.until) {
		var zero V
		return zero, false
	}
	return en.v, true
}

// put sets k to v until the given time.
func (e *expiring[K, V]) put(k K, v V, until, now time.Time) {
	if _, ok := e.entries[k]; !ok && len(e.entries) >= e.max {
		e.makeRoom(now)
	}
	e.entries[k] = expiringEntry[V]{v: v, until: until}
}

// makeRoom is linear in the size of the map; it runs only on inserts into
// a full map, and every caller inserts at most once per password check,
// which costs far more.
func (e *expiring[K, V]) makeRoom(now time.Time) {
	var first K
	var firstUntil time.Time
	found := false
	for k, en := range e.entries {
		if !now.Before(en.until) {
			delete(e.entries, k)
			continue
		}
		if !found || en.until.Before(firstUntil) {
			first, firstUntil, found = k, en.until, true
		}
	}
	if found && len(e.entries) >= e.max {
		delete(e.entries, first)
	}
}

func (e *expiring[K, V]) remove(k K) { delete(e.entries, k) }

// keep drops the entries for which ok is false.
func (e *expiring[K, V]) keep(ok func(K, V) bool) {
	for k, en := range e.entries {
		if !ok(k, en.v) {
			delete(e.entries, k)
		}
	}
}

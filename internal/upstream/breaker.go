package upstream

import (
	"sync"
	"time"
)

// Breaker settings. Three failures in a row is enough to tell a dead source
// from a blip; the open period starts short so a mirror that recovers is
// used again quickly, and doubles while probes keep failing so a source that
// stays down is asked about once every few minutes, not once per pull.
const (
	breakerThreshold  = 3
	breakerMinBackoff = 5 * time.Second
	breakerMaxBackoff = 5 * time.Minute
)

// BreakerState is the state of one source's circuit breaker.
type BreakerState string

const (
	BreakerClosed   BreakerState = "closed"    // requests flow
	BreakerOpen     BreakerState = "open"      // requests are refused until the backoff ends
	BreakerHalfOpen BreakerState = "half-open" // one probe is allowed through
)

// breaker is a consecutive-failure circuit breaker with half-open probes.
// After threshold failures in a row it opens for a backoff; when that ends,
// one request (the probe) is let through while the others are still refused.
// A successful probe closes it; a failed one opens it again for twice as
// long. Safe for concurrent use.
type breaker struct {
	now func() time.Time

	mu        sync.Mutex
	failures  int       // consecutive failures
	opened    int       // consecutive openings, for the backoff
	openUntil time.Time // zero when closed
	probing   bool      // a half-open probe is in flight
	// lastFailure is the latest failure in regcache's own words (see
	// failureText), and when it happened; kept after the breaker closes,
	// so a status page can say what went wrong last.
	lastFailure   string
	lastFailureAt time.Time
}

func newBreaker(now func() time.Time) *breaker { return &breaker{now: now} }

// allow reports whether a request may go to the source now, and whether it
// is the half-open probe (which must be reported back with done).
func (b *breaker) allow() (ok, probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openUntil.IsZero() {
		return true, false
	}
	if b.now().Before(b.openUntil) || b.probing {
		return false, false
	}
	b.probing = true
	return true, true
}

// done records the outcome of an allowed request. A healthy answer,
// including a 404, closes the breaker: the source is up even if it lacks this
// content. A neutral outcome (the caller gave up) frees the probe's slot
// without moving the breaker either way. why describes a failure (see
// failureText); other outcomes ignore it.
func (b *breaker) done(probe bool, outcome outcome, retryAfter time.Duration, why string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe {
		b.probing = false
	}
	switch outcome {
	case outcomeSuccess:
		b.failures, b.opened, b.openUntil = 0, 0, time.Time{}
	case outcomeFailure:
		b.failures++
		b.lastFailure, b.lastFailureAt = why, b.now()
		if probe || b.failures >= breakerThreshold {
			b.opened++
			d := min(breakerMinBackoff<<min(b.opened-1, 16), breakerMaxBackoff)
			// A source that said when to come back is not asked sooner.
			d = max(d, retryAfter)
			b.openUntil = b.now().Add(d)
		}
	}
}

// lastError reports the latest failure and when it happened; "" if none.
func (b *breaker) lastError() (string, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lastFailure, b.lastFailureAt
}

// state reports the breaker's state for status pages and tests.
func (b *breaker) state() (BreakerState, int, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.openUntil.IsZero():
		return BreakerClosed, b.failures, time.Time{}
	case b.now().Before(b.openUntil):
		return BreakerOpen, b.failures, b.openUntil
	default:
		return BreakerHalfOpen, b.failures, b.openUntil
	}
}

// outcome is how a request's result counts for the breaker.
type outcome int

const (
	outcomeSuccess outcome = iota // 2xx, or a healthy "no" (404, 401, 403, other 4xx)
	outcomeFailure                // unreachable, timeout, 5xx, 429, wrong digest
	outcomeNeutral                // the caller cancelled, or the request was never sent
)

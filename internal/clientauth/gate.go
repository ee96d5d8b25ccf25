package clientauth

import (
	"context"
	"errors"
	"slices"
	"sync"
)

// Priorities of password checks waiting at the gate, best first.
const (
	// prioKnown: this user has logged in from this client before.
	prioKnown = iota
	// prioClean: neither the client nor the user name has failed lately.
	prioClean
	// prioSuspect: the client or the user name has failed lately.
	prioSuspect
	numPrios
)

// errGateFull is returned when too many checks are waiting already.
var errGateFull = errors.New("too many password checks waiting")

// gate lets a few password checks run at once, so bcrypt cannot take every
// CPU from the requests that need none. Waiters are served by priority,
// then in order of arrival: a client with a clean record does not queue
// behind a guesser's checks. How long a waiter waits is bounded by its
// context (the client's request); how many may wait, by maxWaiting. When
// the queue is full, a newcomer takes the place of the last waiter of a
// lower priority, so guessers cannot fill it against a clean client.
type gate struct {
	mu         sync.Mutex
	free       int
	queues     [numPrios][]*waiter
	waiting    int
	maxWaiting int
}

type waiter struct {
	ready   chan struct{} // closed when the slot is handed over, or on eviction
	evicted bool          // set, under mu, before ready is closed
}

func newGate(slots, maxWaiting int) *gate {
	return &gate{free: slots, maxWaiting: maxWaiting}
}

func (g *gate) acquire(ctx context.Context, prio int) error {
	g.mu.Lock()
	if g.free > 0 && g.waiting == 0 {
		g.free--
		g.mu.Unlock()
		return nil
	}
	if g.waiting >= g.maxWaiting && !g.evictBelowLocked(prio) {
		g.mu.Unlock()
		return errGateFull
	}
	w := &waiter{ready: make(chan struct{})}
	g.queues[prio] = append(g.queues[prio], w)
	g.waiting++
	g.mu.Unlock()

	select {
	case <-w.ready:
	case <-ctx.Done():
		g.mu.Lock()
		select {
		case <-w.ready: // handed the slot, or evicted, while giving up
		default:
			g.queues[prio] = slices.DeleteFunc(g.queues[prio], func(o *waiter) bool { return o == w })
			g.waiting--
			g.mu.Unlock()
			return ctx.Err()
		}
		g.mu.Unlock()
		if !w.evicted {
			g.release() // pass the slot on
		}
		return ctx.Err()
	}
	g.mu.Lock()
	evicted := w.evicted
	g.mu.Unlock()
	if evicted {
		return errGateFull
	}
	return nil
}

// evictBelowLocked turns away the last waiter of the lowest priority below
// prio, if there is one.
func (g *gate) evictBelowLocked(prio int) bool {
	for p := numPrios - 1; p > prio; p-- {
		if q := g.queues[p]; len(q) > 0 {
			w := q[len(q)-1]
			g.queues[p] = q[:len(q)-1]
			g.waiting--
			w.evicted = true
			close(w.ready)
			return true
		}
	}
	return false
}

func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for p, q := range g.queues {
		if len(q) > 0 {
			g.queues[p] = q[1:]
			g.waiting--
			close(q[0].ready)
			return
		}
	}
	g.free++
}

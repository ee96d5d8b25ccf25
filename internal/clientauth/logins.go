package clientauth

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"net/netip"
	"runtime"
	"sync"
	"time"
)

// Bounds of what Logins remembers. Every table is keyed by something a
// client chooses (its address, a user name, a password), so every table has
// a size bound as well as a lifetime.
const (
	// verifiedTTL keeps bcrypt off the path of clients that send Basic
	// credentials with every request.
	verifiedTTL = 5 * time.Minute
	// refusedTTL is longer than forgetFailures: dockerd forwards the
	// user's Docker Hub login to its mirror with every pull, and that one
	// refusal must not add up to a backoff for the host.
	refusedTTL = time.Hour
	// knownTTL is how long a client that logged in as a user is exempt
	// from the backoff of that user name.
	knownTTL = 24 * time.Hour
	// memoryMax bounds each of the tables above; failuresMax, the tables
	// of failures by client and by user name.
	memoryMax   = 4096
	failuresMax = 8192
)

// The backoff: after freeFailures consecutive failures a client (or user
// name) waits 1 s before its next check, then 2 s, 4 s, … up to
// maxBackoff. Its failures are forgotten after a success, or after
// forgetFailures without one.
const (
	freeFailures   = 3
	maxBackoff     = time.Minute
	forgetFailures = 15 * time.Minute
	// maxChecksPerClient bounds the checks of one client that run or wait
	// at once (identical logins share one check).
	maxChecksPerClient = 4
	// maxWaitingPerSlot bounds the checks waiting at the gate.
	maxWaitingPerSlot = 64
	// busyRetry is the Retry-After of a check turned away because too
	// many were running or waiting.
	busyRetry = time.Second
)

// Outcome is what became of a login.
type Outcome int

const (
	// Refused: the user is unknown or the password wrong.
	Refused Outcome = iota
	// Accepted: the password is the user's.
	Accepted
	// Throttled: the password was not checked; the client or the user
	// name failed too often lately, or too many checks are under way.
	Throttled
)

// Verdict is the answer to a login.
type Verdict struct {
	Outcome Outcome
	// Stamp identifies the user's entry in the file (Accepted). Tokens
	// carry it: see File.Valid.
	Stamp string
	// RetryAfter is how long a Throttled client should wait.
	RetryAfter time.Duration
	// Remembered is set when the answer came from memory, with no check.
	Remembered bool
	// Backoff is set on a check that was Refused and made the client or the
	// user name wait from now on: the longer of the two waits.
	Backoff time.Duration
}

// Options tunes Logins; the zero value suits a server.
type Options struct {
	// Checked is called for every bcrypt check Logins runs (a metric).
	Checked func()
	// Concurrency is how many checks may run at once; 0 means half the
	// CPUs Go uses, at least one, so checks always leave CPU to the
	// requests that need none (cached pulls).
	Concurrency int
}

// Logins checks logins against a File without letting anyone guess
// passwords quickly or keep the server busy with bcrypt:
//
//  1. A login that was checked lately is answered from memory (a keyed
//     hash of user and password, never the password): good ones for a few
//     minutes, wrong ones for an hour. A wrong password sent again is no
//     new guess and costs neither side anything.
//  2. A client (an IPv4 address, or an IPv6 /64) and a user name that have
//     failed more than freeFailures times in a row wait, exponentially
//     longer up to maxBackoff, before they get another check. A client
//     that has logged in as a user before is not held back by the
//     failures of that user name, so guessers cannot lock a user's own
//     machines out. A user name counts whether it exists or not, so
//     backoffs tell nothing about which users exist.
//  3. Checks run through a gate of a few slots, where a client with a
//     clean record goes before those that failed lately.
//  4. Every check costs the same (see Htpasswd.check).
//
// Client addresses are taken as the connection gives them: behind a proxy
// all clients share the proxy's address and its backoff.
type Logins struct {
	file    *File
	gate    *gate
	checked func()
	now     func() time.Time
	key     [32]byte // keys the hashes of remembered logins; random per process

	mu sync.Mutex
	// seen is the file version that the memories below were made for.
	seen     *Htpasswd
	verified *expiring[[32]byte, string] // login hash → user
	refused  *expiring[[32]byte, string]
	known    *expiring[pair, string] // → user
	clients  *expiring[netip.Prefix, failures]
	users    *expiring[[32]byte, failures] // keyed by a hash: names can be long
	inflight map[[32]byte]*call
	running  map[netip.Prefix]int
}

// pair is a user name (hashed) and a client that logged in as it.
type pair struct {
	user   [32]byte
	client netip.Prefix
}

// failures is the record of a client or user name.
type failures struct {
	n    int // consecutive failures
	last time.Time
}

// heldUntil is when the next check may run.
func (f failures) heldUntil() time.Time { return f.last.Add(backoff(f.n)) }

// backoff is the wait after n consecutive failures.
func backoff(n int) time.Duration {
	if n <= freeFailures {
		return 0
	}
	return min(time.Second<<min(n-freeFailures-1, 16), maxBackoff)
}

// call is a check in flight that identical logins wait for.
type call struct {
	done chan struct{}
	v    Verdict
	// abandoned: the client that ran it went away before the check ran;
	// those waiting run their own.
	abandoned bool
	// joined counts the logins waiting for it (tests watch it).
	joined int
}

// NewLogins returns a Logins for the users in f.
func NewLogins(f *File, opt Options) *Logins {
	slots := opt.Concurrency
	if slots <= 0 {
		slots = max(1, runtime.GOMAXPROCS(0)/2)
	}
	l := &Logins{
		file:     f,
		gate:     newGate(slots, slots*maxWaitingPerSlot),
		checked:  opt.Checked,
		now:      time.Now,
		seen:     f.current.Load(),
		verified: newExpiring[[32]byte, string](memoryMax),
		refused:  newExpiring[[32]byte, string](memoryMax),
		known:    newExpiring[pair, string](memoryMax),
		clients:  newExpiring[netip.Prefix, failures](failuresMax),
		users:    newExpiring[[32]byte, failures](failuresMax),
		inflight: map[[32]byte]*call{},
		running:  map[netip.Prefix]int{},
	}
	rand.Read(l.key[:])
	return l
}

// Valid reports whether a token's user and stamp still match the file.
func (l *Logins) Valid(user, stamp string) bool { return l.file.Valid(user, stamp) }

// Login checks user and password for a request from client; ctx bounds
// the wait for a check.
func (l *Logins) Login(ctx context.Context, client netip.Addr, user, password string) Verdict {
	id := l.loginHash(user, password)
	ck, uk := clientKey(client), sha256.Sum256([]byte(user))
	for {
		now := l.now()
		l.mu.Lock()
		// Loaded under the lock, so that memories only ever move forward
		// from one file version to the next.
		h := l.file.current.Load()
		l.syncLocked(h)
		if _, ok := l.verified.get(id, now); ok {
			l.mu.Unlock()
			return Verdict{Outcome: Accepted, Stamp: h.stamps[user], Remembered: true}
		}
		if _, ok := l.refused.get(id, now); ok {
			l.mu.Unlock()
			return Verdict{Outcome: Refused, Remembered: true}
		}
		if wait := l.heldLocked(ck, uk, now); wait > 0 {
			l.mu.Unlock()
			return Verdict{Outcome: Throttled, RetryAfter: wait}
		}
		if c := l.inflight[id]; c != nil {
			c.joined++
			l.mu.Unlock()
			select {
			case <-c.done:
			case <-ctx.Done():
				return Verdict{Outcome: Throttled, RetryAfter: busyRetry}
			}
			if c.abandoned {
				continue
			}
			return c.v
		}
		if l.running[ck] >= maxChecksPerClient {
			l.mu.Unlock()
			return Verdict{Outcome: Throttled, RetryAfter: busyRetry}
		}
		c := &call{done: make(chan struct{})}
		l.inflight[id] = c
		l.running[ck]++
		prio := l.priorityLocked(ck, uk, now)
		l.mu.Unlock()

		c.v, c.abandoned = l.run(ctx, h, id, ck, uk, user, password, prio)
		l.mu.Lock()
		delete(l.inflight, id)
		if l.running[ck]--; l.running[ck] <= 0 {
			delete(l.running, ck)
		}
		l.mu.Unlock()
		close(c.done)
		return c.v
	}
}

// run waits at the gate, checks the password against h, and records the
// outcome.
func (l *Logins) run(ctx context.Context, h *Htpasswd, id [32]byte, ck netip.Prefix, uk [32]byte, user, password string, prio int) (Verdict, bool) {
	if err := l.gate.acquire(ctx, prio); err != nil {
		return Verdict{Outcome: Throttled, RetryAfter: busyRetry}, true
	}
	// Failures recorded while this check waited count against it.
	l.mu.Lock()
	wait := l.heldLocked(ck, uk, l.now())
	l.mu.Unlock()
	if wait > 0 {
		l.gate.release()
		return Verdict{Outcome: Throttled, RetryAfter: wait}, false
	}
	// The slot is released after the outcome is recorded, so that the
	// next check in line sees this one's failure.
	defer l.gate.release()
	if l.checked != nil {
		l.checked()
	}
	ok := h.check(user, password)

	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	// A check of a file version that was replaced meanwhile is answered
	// but not remembered.
	current := l.seen == h
	if ok {
		if current {
			l.verified.put(id, user, now.Add(verifiedTTL), now)
			l.known.put(pair{uk, ck}, user, now.Add(knownTTL), now)
		}
		l.clients.remove(ck)
		l.users.remove(uk)
		return Verdict{Outcome: Accepted, Stamp: h.stamps[user]}, false
	}
	if current {
		l.refused.put(id, user, now.Add(refusedTTL), now)
	}
	return Verdict{Outcome: Refused, Backoff: max(fail(l.clients, ck, now), fail(l.users, uk, now))}, false
}

// fail records a failure and returns the wait it starts.
func fail[K comparable](t *expiring[K, failures], k K, now time.Time) time.Duration {
	f, _ := t.get(k, now)
	f.n++
	f.last = now
	t.put(k, f, now.Add(forgetFailures), now)
	return backoff(f.n)
}

// heldLocked returns how long the client or user name must still wait.
func (l *Logins) heldLocked(ck netip.Prefix, uk [32]byte, now time.Time) time.Duration {
	var until time.Time
	if f, ok := l.clients.get(ck, now); ok {
		until = f.heldUntil()
	}
	if _, known := l.known.get(pair{uk, ck}, now); !known {
		if f, ok := l.users.get(uk, now); ok && f.heldUntil().After(until) {
			until = f.heldUntil()
		}
	}
	return until.Sub(now)
}

func (l *Logins) priorityLocked(ck netip.Prefix, uk [32]byte, now time.Time) int {
	if _, ok := l.known.get(pair{uk, ck}, now); ok {
		return prioKnown
	}
	_, clientFailed := l.clients.get(ck, now)
	_, userFailed := l.users.get(uk, now)
	if clientFailed || userFailed {
		return prioSuspect
	}
	return prioClean
}

// syncLocked forgets, when the file has been read again, the remembered
// logins of every user whose entry changed: a removed user or an old
// password stops working at once. Failures are kept.
func (l *Logins) syncLocked(h *Htpasswd) {
	if h == l.seen {
		return
	}
	old := l.seen
	l.verified.keep(func(_ [32]byte, user string) bool { return h.sameEntry(old, user) })
	l.refused.keep(func(_ [32]byte, user string) bool { return h.sameEntry(old, user) })
	l.known.keep(func(_ pair, user string) bool { return h.sameEntry(old, user) })
	l.seen = h
}

// loginHash identifies a login in memory without keeping the password.
func (l *Logins) loginHash(user, password string) [32]byte {
	mac := hmac.New(sha256.New, l.key[:])
	mac.Write([]byte(user))
	mac.Write([]byte{0})
	mac.Write([]byte(password))
	var id [32]byte
	copy(id[:], mac.Sum(nil))
	return id
}

// clientKey is the unit a backoff applies to: an IPv4 address, or the /64
// of an IPv6 address, which is what one site usually gets.
func clientKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

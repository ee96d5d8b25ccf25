package clientauth

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// loginsFixture is a Logins on a real htpasswd file (MinCost hashes), with
// a clock of its own and a count of the bcrypt checks it runs.
type loginsFixture struct {
	t      *testing.T
	l      *Logins
	f      *File
	path   string
	now    time.Time
	checks atomic.Int64
}

func newLoginsFixture(t *testing.T, users map[string]string) *loginsFixture {
	t.Helper()
	fx := &loginsFixture{t: t, now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	fx.f, fx.path = writeFile(t, users)
	fx.l = NewLogins(fx.f, Options{Checked: func() { fx.checks.Add(1) }})
	fx.l.now = func() time.Time { return fx.now }
	return fx
}

func (fx *loginsFixture) login(client, user, password string) Verdict {
	return fx.loginCtx(context.Background(), client, user, password)
}

func (fx *loginsFixture) loginCtx(ctx context.Context, client, user, password string) Verdict {
	fx.t.Helper()
	return fx.l.Login(ctx, netip.MustParseAddr(client), user, password)
}

// step is one login in a scenario and what must come of it.
type step struct {
	advance  time.Duration // the clock moves first
	client   string
	user, pw string
	want     Outcome
	retry    time.Duration // for Throttled
	checked  bool          // a bcrypt check ran
}

func (fx *loginsFixture) run(steps []step) {
	fx.t.Helper()
	for i, s := range steps {
		fx.now = fx.now.Add(s.advance)
		before := fx.checks.Load()
		v := fx.login(s.client, s.user, s.pw)
		checked := fx.checks.Load() > before
		if v.Outcome != s.want || (s.want == Throttled && v.RetryAfter != s.retry) || checked != s.checked {
			fx.t.Errorf("step %d (%s as %q, password %q): %+v, checked %v; want outcome %v retry %v checked %v",
				i, s.client, s.user, s.pw, v, checked, s.want, s.retry, s.checked)
		}
	}
}

func TestLoginsBackoff(t *testing.T) {
	const a, b, c = "10.0.0.1", "10.0.0.2", "10.0.0.3"
	users := map[string]string{"ci": "ci-pw", "ops": "ops-pw"}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"a client and a user name wait after the free failures", []step{
			{0, a, "ci", "w1", Refused, 0, true},
			{0, a, "ci", "w2", Refused, 0, true},
			{0, a, "ci", "w3", Refused, 0, true},
			{0, a, "ci", "w4", Refused, 0, true}, // the 4th failure: 1 s
			{0, a, "ci", "w5", Throttled, time.Second, false},
			{0, a, "ops", "w5", Throttled, time.Second, false}, // the client waits
			{0, b, "ci", "w6", Throttled, time.Second, false},  // the user name waits
			{0, b, "ops", "w1", Refused, 0, true},              // neither is held
			{0, a, "ci", "ci-pw", Throttled, time.Second, false},
			{0, a, "ci", "w1", Refused, 0, false},          // the same guess again: no check, no failure
			{time.Second, a, "ci", "w5", Refused, 0, true}, // the 5th: 2 s
			{0, a, "ci", "w6", Throttled, 2 * time.Second, false},
			{1500 * time.Millisecond, a, "ci", "w6", Throttled, 500 * time.Millisecond, false},
			{500 * time.Millisecond, a, "ci", "ci-pw", Accepted, 0, true}, // forgets both records
			{0, a, "ci", "w7", Refused, 0, true},
			{0, b, "ci", "w8", Refused, 0, true},
		}},
		{"the wait is capped, and failures are forgotten", func() []step {
			var s []step
			for i := range 12 {
				s = append(s, step{maxBackoff, a, "ops", fmt.Sprint("guess", i), Refused, 0, true})
			}
			return append(s,
				step{0, a, "ops", "again", Throttled, maxBackoff, false},
				step{maxBackoff - time.Second, a, "ops", "again", Throttled, time.Second, false},
				step{forgetFailures, a, "ops", "x1", Refused, 0, true}, // a fresh record
				step{0, a, "ops", "x2", Refused, 0, true},
			)
		}()},
		{"IPv6 clients are held by /64, IPv4-mapped as IPv4", []step{
			{0, "2001:db8::1", "u1", "w1", Refused, 0, true},
			{0, "2001:db8::2", "u2", "w2", Refused, 0, true},
			{0, "2001:db8::3", "u3", "w3", Refused, 0, true},
			{0, "2001:db8::4", "u4", "w4", Refused, 0, true},
			{0, "2001:db8::5", "u5", "w5", Throttled, time.Second, false},
			{0, "2001:db8:0:1::5", "u5", "w5", Refused, 0, true},
			{0, c, "u1", "v1", Refused, 0, true},
			{0, c, "u1", "v2", Refused, 0, true},
			{0, c, "u1", "v3", Refused, 0, true},
			{0, c, "u6", "v4", Refused, 0, true},
			{0, "::ffff:10.0.0.3", "u7", "v5", Throttled, time.Second, false},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			newLoginsFixture(t, users).run(tc.steps)
		})
	}
}

// A client that logged in as a user is not held back by others' failures
// for that user name, but still by its own.
func TestLoginsKnownClient(t *testing.T) {
	fx := newLoginsFixture(t, map[string]string{"ci": "ci-pw", "ops": "ops-pw"})
	const known, guesser, stranger = "10.0.0.1", "10.0.0.66", "10.0.0.7"
	fx.run([]step{{0, known, "ci", "ci-pw", Accepted, 0, true}})
	for i := range 4 {
		fx.run([]step{{0, fmt.Sprintf("10.0.1.%d", i), "ci", fmt.Sprint("guess", i), Refused, 0, true}})
	}
	// As if the good login had been remembered long ago: checks must run.
	fx.l.verified = newExpiring[[32]byte, string](memoryMax)
	fx.run([]step{
		{0, stranger, "ci", "ci-pw", Throttled, time.Second, false},
		{0, known, "ci", "ci-pw", Accepted, 0, true},
	})
	fx.l.verified = newExpiring[[32]byte, string](memoryMax)
	fx.run([]step{
		{0, known, "ops", "g1", Refused, 0, true},
		{0, known, "ops", "g2", Refused, 0, true},
		{0, known, "ops", "g3", Refused, 0, true},
		{0, known, "ops", "g4", Refused, 0, true},
		{0, known, "ci", "ci-pw", Throttled, time.Second, false},
		{0, guesser, "ci", "guess9", Refused, 0, true}, // ci's record was forgotten on success
	})
}

// Whether a user exists changes nothing anyone can observe: the same
// attempts for a known and an unknown user name get the same answers and
// run the same checks.
func TestLoginsDoNotTellWhoExists(t *testing.T) {
	seq := func(user string) ([]Verdict, int64) {
		fx := newLoginsFixture(t, map[string]string{"ci": "ci-pw"})
		var vs []Verdict
		for i := range 8 {
			client := fmt.Sprintf("10.0.0.%d", i%3)
			fx.now = fx.now.Add(700 * time.Millisecond)
			vs = append(vs, fx.login(client, user, fmt.Sprint("guess", i%6)))
		}
		return vs, fx.checks.Load()
	}
	known, kc := seq("ci")
	unknown, uc := seq("nobody")
	if kc != uc {
		t.Errorf("%d checks for a known user, %d for an unknown one", kc, uc)
	}
	for i := range known {
		if known[i] != unknown[i] {
			t.Errorf("attempt %d: %+v for a known user, %+v for an unknown one", i, known[i], unknown[i])
		}
	}
}

// A reload forgets the remembered logins of every user whose entry changed,
// and only those.
func TestLoginsReload(t *testing.T) {
	fx := newLoginsFixture(t, map[string]string{"ci": "ci-pw", "ops": "ops-pw", "dev": "dev-pw"})
	const a = "10.0.0.1"
	fx.run([]step{
		{0, a, "ci", "ci-pw", Accepted, 0, true},
		{0, a, "ops", "ops-pw", Accepted, 0, true},
		{0, a, "dev", "dev-pw", Accepted, 0, true},
		{0, a, "dev", "wrong", Refused, 0, true},
		{0, a, "dev", "dev-pw", Accepted, 0, false},
	})
	oldOps := fx.l.Login(t.Context(), netip.MustParseAddr(a), "ops", "ops-pw").Stamp
	rewrite(t, fx.path, map[string]string{"ops": "ops-new", "dev": "dev-pw", "new": "new-pw"})
	if changed, err := fx.f.Reload(); !changed || err != nil {
		t.Fatalf("reload: %v %v", changed, err)
	}
	fx.run([]step{
		{0, a, "ci", "ci-pw", Refused, 0, true},   // removed
		{0, a, "ops", "ops-pw", Refused, 0, true}, // old password
		{0, a, "ops", "ops-new", Accepted, 0, true},
		{0, a, "dev", "dev-pw", Accepted, 0, false}, // unchanged: still remembered
		{0, a, "dev", "wrong", Refused, 0, false},
		{0, a, "new", "new-pw", Accepted, 0, true},
	})
	if fx.l.Valid("ops", oldOps) {
		t.Error("a token stamp of the old password is still valid")
	}
}

// Every table stays within its bound, however many clients and user names
// an attacker cycles through.
func TestLoginsMemoryIsBounded(t *testing.T) {
	fx := newLoginsFixture(t, map[string]string{"ci": "ci-pw"})
	if fx.l.clients.max != failuresMax || fx.l.users.max != failuresMax || fx.l.refused.max != memoryMax || fx.l.verified.max != memoryMax || fx.l.known.max != memoryMax {
		t.Fatal("tables without their bounds")
	}
	// Small bounds, so that the test fills them quickly; no real check.
	const bound = 50
	fx.l.clients, fx.l.users = newExpiring[netip.Prefix, failures](bound), newExpiring[[32]byte, failures](bound)
	fx.l.refused, fx.l.verified = newExpiring[[32]byte, string](bound), newExpiring[[32]byte, string](bound)
	fx.l.known = newExpiring[pair, string](bound)
	fx.f.current.Load().compare = func(hash, pw []byte) error {
		if string(pw) == "ci-pw" {
			return nil
		}
		return bcrypt.ErrMismatchedHashAndPassword
	}
	for i := range 1000 {
		client := fmt.Sprintf("10.%d.%d.1", i/250, i%250)
		fx.login(client, fmt.Sprint("user", i), fmt.Sprint("guess", i))
		fx.login(client, "ci", "ci-pw")
		fx.now = fx.now.Add(time.Millisecond)
	}
	for name, n := range map[string]int{
		"clients": len(fx.l.clients.entries), "users": len(fx.l.users.entries), "refused": len(fx.l.refused.entries),
		"verified": len(fx.l.verified.entries), "known": len(fx.l.known.entries),
	} {
		if n > bound {
			t.Errorf("%s: %d entries, bound %d", name, n, bound)
		}
	}
	if n := fx.checks.Load(); n < 1000 {
		t.Errorf("%d checks for 1000 distinct guesses", n)
	}
}

// blockingCompare makes every check wait until released, and records the
// order in which checks ran, by password.
type blockingCompare struct {
	entered chan string
	release chan struct{}
}

func (fx *loginsFixture) blockChecks() *blockingCompare {
	bc := &blockingCompare{entered: make(chan string, 100), release: make(chan struct{}, 100)}
	h := fx.f.current.Load()
	h.compare = func(hash, pw []byte) error {
		if _, err := bcrypt.Cost(hash); err == nil && len(hash) > 0 {
			for _, pad := range h.pads {
				if string(pad) == string(hash) {
					return bcrypt.ErrMismatchedHashAndPassword
				}
			}
		}
		bc.entered <- string(pw)
		<-bc.release
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	return bc
}

// waitFor polls a condition on the Logins' state.
func (fx *loginsFixture) waitFor(what string, ok func() bool) {
	fx.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		fx.l.mu.Lock()
		fx.l.gate.mu.Lock()
		done := ok()
		fx.l.gate.mu.Unlock()
		fx.l.mu.Unlock()
		if done {
			return
		}
		if time.Now().After(deadline) {
			fx.t.Fatalf("never: %s", what)
		}
	}
}

func TestLoginsConcurrency(t *testing.T) {
	fx := newLoginsFixture(t, map[string]string{"ci": "ci-pw", "ops": "ops-pw"})
	const greedy = "10.0.0.2"
	fx.run([]step{{0, greedy, "ops", "earlier", Refused, 0, true}}) // a suspect from now on
	fx.l.gate = newGate(1, 6)
	bc := fx.blockChecks()
	var wg sync.WaitGroup
	results := make(chan string, 100)
	start := func(ctx context.Context, name, client, user, pw string) {
		wg.Go(func() {
			v := fx.loginCtx(ctx, client, user, pw)
			results <- fmt.Sprintf("%s:%v", name, v.Outcome)
		})
	}

	// One check runs; identical logins join it instead of queueing.
	start(t.Context(), "leader", "10.0.0.1", "ci", "ci-pw")
	if got := <-bc.entered; got != "ci-pw" {
		t.Fatalf("first check for %q", got)
	}
	for i := range 3 {
		start(t.Context(), fmt.Sprint("joiner", i), fmt.Sprintf("10.0.0.%d", 10+i), "ci", "ci-pw")
	}
	fx.waitFor("three logins joined the check in flight", func() bool {
		c := fx.l.inflight[fx.l.loginHash("ci", "ci-pw")]
		return c != nil && c.joined == 3
	})

	// A client may have maxChecksPerClient checks running or waiting.
	for i := range maxChecksPerClient {
		start(t.Context(), fmt.Sprint("greedy", i), greedy, "ops", fmt.Sprint("guess", i))
		fx.waitFor("the greedy client's check waits", func() bool { return fx.l.gate.waiting == i+1 })
	}
	if v := fx.login(greedy, "ops", "one-too-many"); v.Outcome != Throttled || v.RetryAfter != busyRetry {
		t.Errorf("a check beyond the client's share: %+v", v)
	}
	// A client with a clean record goes before the suspect's checks.
	start(t.Context(), "clean", "10.0.0.3", "ci", "clean-guess")
	fx.waitFor("the clean client waits", func() bool { return fx.l.gate.waiting == maxChecksPerClient+1 })
	// A waiter that gives up leaves, and one that joined it runs its own.
	ctx, cancel := context.WithCancel(t.Context())
	start(ctx, "leaver", "10.0.0.4", "ci", "other")
	fx.waitFor("the leaver waits", func() bool { return fx.l.gate.waiting == maxChecksPerClient+2 })
	start(t.Context(), "follower", "10.0.0.5", "ci", "other")
	fx.waitFor("the follower joined", func() bool {
		c := fx.l.inflight[fx.l.loginHash("ci", "other")]
		return c != nil && c.joined == 1
	})
	// A suspect (ops has failed) is turned away from the full queue.
	if v := fx.login("10.0.0.6", "ops", "x"); v.Outcome != Throttled || v.RetryAfter != busyRetry {
		t.Errorf("a check with the gate's queue full: %+v", v)
	}
	cancel()
	if got := <-results; got != "leaver:2" {
		t.Fatalf("the leaver: %s", got)
	}
	fx.waitFor("the follower waits in the leaver's place", func() bool { return fx.l.gate.waiting == maxChecksPerClient+2 })

	// Release checks one by one and record the order they run in. The
	// greedy client's fourth guess never runs: by its turn the client has
	// failed four times and waits.
	want := []string{"clean-guess", "other", "guess0", "guess1", "guess2"}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	var order []string
	bc.release <- struct{}{} // the leader's
	for running := true; running; {
		select {
		case pw := <-bc.entered:
			order = append(order, pw)
			bc.release <- struct{}{}
		case <-done:
			running = false
		}
	}
	close(results)
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Errorf("checks ran in the order %v, want %v", order, want)
	}
	got := map[string]int{}
	for r := range results {
		got[r]++
	}
	for _, r := range []string{"leader:1", "joiner0:1", "joiner1:1", "joiner2:1", "clean:0", "follower:0", "greedy0:0", "greedy1:0", "greedy2:0", "greedy3:2"} {
		if got[r] != 1 {
			t.Errorf("no %s (all: %v)", r, got)
		}
	}
	if n := int(fx.checks.Load()); n != 1+1+len(want) {
		t.Errorf("%d checks, want %d: one per distinct login that was not turned away", n, 1+1+len(want))
	}
}

// A client that is held back is answered at once: it takes no place at
// the gate, even while a check is running.
func TestLoginsHeldClientsDoNotQueue(t *testing.T) {
	fx := newLoginsFixture(t, map[string]string{"ci": "ci-pw"})
	const held = "10.0.0.1"
	fx.run([]step{
		{0, held, "u", "g1", Refused, 0, true},
		{0, held, "u", "g2", Refused, 0, true},
		{0, held, "u", "g3", Refused, 0, true},
		{0, held, "u", "g4", Refused, 0, true},
		{time.Second, held, "u", "g5", Refused, 0, true}, // held for 2 s now
	})
	bc := fx.blockChecks()
	done := make(chan Verdict, 1)
	go func() { done <- fx.login("10.0.0.2", "ci", "ci-pw") }()
	<-bc.entered
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if v := fx.loginCtx(ctx, held, "ci", "ci-pw"); v.Outcome != Throttled || v.RetryAfter != 2*time.Second {
		t.Errorf("a held client while a check runs: %+v, want held for 2 s", v)
	}
	bc.release <- struct{}{}
	if v := <-done; v.Outcome != Accepted {
		t.Errorf("the running check: %+v", v)
	}
}

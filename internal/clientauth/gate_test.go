package clientauth

import (
	"context"
	"testing"
	"time"
)

// Waiters get the slot by priority, then in order of arrival; one that
// gives up leaves the queue and never holds the slot.
func TestGate(t *testing.T) {
	g := newGate(1, 5)
	ctx := t.Context()
	if err := g.acquire(ctx, prioSuspect); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 8)
	queued := 0
	wait := func(name string, prio int, ctx context.Context) chan error {
		done := make(chan error, 1)
		go func() {
			err := g.acquire(ctx, prio)
			if err == nil {
				order <- name
			}
			done <- err
		}()
		// Queued before the next one starts, so arrival order is known.
		queued++
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			g.mu.Lock()
			n := g.waiting
			g.mu.Unlock()
			if n == queued {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("waiter never queued")
			}
		}
		return done
	}
	gone, cancel := context.WithCancel(ctx)
	w := map[string]chan error{}
	w["suspect1"] = wait("suspect1", prioSuspect, ctx)
	w["clean1"] = wait("clean1", prioClean, ctx)
	w["leaver"] = wait("leaver", prioKnown, gone)
	w["suspect2"] = wait("suspect2", prioSuspect, ctx)
	w["known"] = wait("known", prioKnown, ctx)
	// The queue is full: a newcomer of the lowest priority is turned
	// away, one of a higher priority takes the last suspect's place.
	if err := g.acquire(ctx, prioSuspect); err != errGateFull {
		t.Fatalf("a sixth waiter with five waiting: %v, want errGateFull", err)
	}
	queued-- // suspect2 leaves as clean2 comes
	w["clean2"] = wait("clean2", prioClean, ctx)
	if err := <-w["suspect2"]; err != errGateFull {
		t.Fatalf("the last suspect, when a clean waiter came to a full queue: %v", err)
	}
	cancel()
	if err := <-w["leaver"]; err == nil {
		t.Fatal("a waiter whose context ended got the slot")
	}
	var got []string
	for range 4 {
		g.release()
		got = append(got, <-order)
	}
	want := []string{"known", "clean1", "clean2", "suspect1"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("served %v, want %v", got, want)
		}
	}
	g.release()
	if g.free != 1 || g.waiting != 0 {
		t.Errorf("after all released: %d free, %d waiting", g.free, g.waiting)
	}
}

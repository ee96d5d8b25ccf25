package pull

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Issue 12's bounded waits against a slow or hanging origin (the fake
// source's stall). revalidate_wait and hedge_delay are real timers, kept
// short; the tests assert what each client got and what the origin and the
// mirror were asked, never how long anything took.

// settle waits for the revalidation of path:tag in flight, if any, and for
// the background work the cache owns (origin answers that outlive a hedge).
// Nothing may start new work meanwhile.
func (h *harness) settle(t *testing.T, path, tag string) {
	t.Helper()
	// Joining the revalidation in flight is waiting for it; with none in
	// flight this does nothing.
	h.cache.flow.Do("t:"+tagKey(t, path, tag).String(), func() (any, error) { return nil, nil })
	h.cache.bg.Wait()
}

// eventually polls cond for up to 10 s of real time.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// async runs a tag request and delivers its answer.
func (h *harness) async(t *testing.T, ctx context.Context, path, tag string) <-chan answerOf {
	ch := make(chan answerOf, 1)
	k := tagKey(t, path, tag)
	go func() {
		m, err := h.cache.ManifestByTag(ctx, k)
		ch <- answerOf{m, err}
	}()
	return ch
}

type answerOf struct {
	m   *Manifest
	err error
}

// pending fails the test if ch already has an answer.
func pending(t *testing.T, ch <-chan answerOf, what string) {
	t.Helper()
	select {
	case a := <-ch:
		t.Fatalf("%s answered while the origin was still silent: %+v, %v", what, a.m, a.err)
	default:
	}
}

// A cached tag past tag_ttl waits for the origin at most revalidate_wait;
// an answer or a failure within it is used as before; 0 waits for the
// origin's answer.
func TestRevalidateWait(t *testing.T) {
	for _, tc := range []struct {
		name      string
		wait      time.Duration
		stall     bool
		originErr error
		want      Result
		reason    string
	}{
		{"origin slower than revalidate_wait", 20 * time.Millisecond, true, nil, Stale, "slow_origin"},
		{"origin answers within it", time.Hour, false, nil, Revalidated, ""},
		{"origin fails within it", time.Hour, false, errDown, Stale, "error"},
		{"revalidate_wait 0 waits for the origin", 0, true, nil, Revalidated, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(o *Options) { o.RevalidateWait = tc.wait })
			md, _ := h.src.push("library/node", "22", []byte("config"))
			if _, err := h.tag(t, "library/node", "22"); err != nil {
				t.Fatal(err)
			}
			h.clock.Advance(2 * time.Minute)
			h.src.setOriginErr(tc.originErr)
			var release func()
			if tc.stall {
				release = h.src.stall()
				t.Cleanup(release)
			}
			ch := h.async(t, context.Background(), "library/node", "22")
			if tc.stall && tc.wait == 0 {
				eventually(t, "the revalidation to reach the origin", func() bool { return h.src.nHeld() == 1 })
				pending(t, ch, "a pull with revalidate_wait 0")
				release()
			}
			a := <-ch
			if a.err != nil || a.m.Result != tc.want || a.m.Digest != md {
				t.Fatalf("got %+v, %v; want %s %s", a.m, a.err, tc.want, md)
			}
			if tc.want == Stale && staleReason(a.m.StaleReason) != tc.reason {
				t.Errorf("stale reason %q (%v), want %q", staleReason(a.m.StaleReason), a.m.StaleReason, tc.reason)
			}
			if release != nil {
				release()
			}
			h.settle(t, "library/node", "22")
			if n := h.src.n("HEAD manifest"); n != 2 {
				t.Errorf("%d HEADs, want 2 (the cold pull and one revalidation)", n)
			}
		})
	}
}

// Row 1 of the issue: five clients of a cached tag whose origin is slow are
// all served the cached answer, stale (slow_origin), by one revalidation;
// it lands in the background, and the next pull sees where the tag moved.
func TestSlowOriginOneRevalidationForAll(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.RevalidateWait = 20 * time.Millisecond })
	old, _ := h.src.push("library/node", "22", []byte("config one"))
	if _, err := h.tag(t, "library/node", "22"); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(2 * time.Minute)
	moved, _ := h.src.push("library/node", "22", []byte("config two"))
	release := h.src.stall()
	t.Cleanup(release)

	const clients = 5
	answers := make([]answerOf, clients)
	var wg sync.WaitGroup
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = <-h.async(t, context.Background(), "library/node", "22")
		}()
	}
	wg.Wait()
	for i, a := range answers {
		if a.err != nil || a.m.Result != Stale || a.m.Digest != old || staleReason(a.m.StaleReason) != "slow_origin" {
			t.Errorf("client %d: %+v, %v; want the cached %s, stale (slow_origin)", i, a.m, a.err, old)
		}
	}
	if n := h.src.n("HEAD manifest"); n != 2 {
		t.Errorf("%d HEADs, want 2: the cold pull, then one revalidation for all %d clients", n, clients)
	}
	if n := testutil.ToFloat64(h.cache.m.StaleServed.WithLabelValues("docker.io", "slow_origin")); n != clients {
		t.Errorf("stale_served{reason=slow_origin} = %v, want %d", n, clients)
	}

	release()
	h.settle(t, "library/node", "22")
	m, err := h.tag(t, "library/node", "22")
	if err != nil || m.Result != Hit || m.Digest != moved {
		t.Fatalf("the pull after the revalidation landed: %+v, %v; want a hit on %s", m, err, moved)
	}
	if got := [2]int{h.src.n("HEAD manifest"), h.src.n("GET manifest by digest")}; got != [2]int{2, 2} {
		t.Errorf("HEADs, GETs by digest = %v, want 2, 2", got)
	}
}

// stale_while_revalidate answers at once from the cache, marked stale
// (revalidating), even when the origin is healthy, and revalidates in the
// background: the next pull sees the new digest.
func TestStaleWhileRevalidate(t *testing.T) {
	for _, stall := range []bool{false, true} {
		name := map[bool]string{false: "healthy origin", true: "hanging origin"}[stall]
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, func(o *Options) { o.StaleWhileRevalidate = true })
			old, _ := h.src.push("library/node", "22", []byte("config one"))
			if _, err := h.tag(t, "library/node", "22"); err != nil {
				t.Fatal(err)
			}
			h.clock.Advance(2 * time.Minute)
			moved, _ := h.src.push("library/node", "22", []byte("config two"))
			release := func() {}
			if stall {
				release = h.src.stall()
				t.Cleanup(release)
			}
			for i := range 3 {
				m, err := h.tag(t, "library/node", "22")
				if err != nil || m.Result != Stale || m.Digest != old || staleReason(m.StaleReason) != "revalidating" {
					t.Fatalf("pull %d: %+v, %v; want the cached %s at once, stale (revalidating)", i, m, err, old)
				}
				if !stall {
					// Each pull here starts and finishes its own revalidation.
					h.settle(t, "library/node", "22")
					break
				}
			}
			release()
			h.settle(t, "library/node", "22")
			if n := h.src.n("HEAD manifest"); n != 2 {
				t.Errorf("%d HEADs, want 2 (the cold pull, one revalidation)", n)
			}
			m, err := h.tag(t, "library/node", "22")
			if err != nil || m.Result != Hit || m.Digest != moved {
				t.Fatalf("after the background revalidation: %+v, %v; want a hit on %s", m, err, moved)
			}
		})
	}
}

// Past tag_ttl+max_stale a cached answer is no longer served without the
// origin's word: the pull waits for the origin, however slow, and fails
// with the origin's error when it fails.
func TestMaxStale(t *testing.T) {
	h := newHarness(t, func(o *Options) {
		o.RevalidateWait = 20 * time.Millisecond
		o.MaxStale = 10 * time.Minute
	})
	md, _ := h.src.push("someone/app", "v1", []byte("config"))
	if _, err := h.tag(t, "someone/app", "v1"); err != nil {
		t.Fatal(err)
	}

	// Within max_stale: a failing origin, then a hanging one, are outwaited
	// by the cache. (The failure must not race revalidate_wait.)
	h.clock.Advance(5 * time.Minute)
	h.src.setOriginErr(errDown)
	h.cache.opt.RevalidateWait = time.Hour
	if m, err := h.tag(t, "someone/app", "v1"); err != nil || m.Result != Stale || staleReason(m.StaleReason) != "error" {
		t.Fatalf("within max_stale, origin down: %+v, %v", m, err)
	}
	h.cache.opt.RevalidateWait = 20 * time.Millisecond
	release := h.src.stall()
	if m, err := h.tag(t, "someone/app", "v1"); err != nil || m.Result != Stale || staleReason(m.StaleReason) != "slow_origin" {
		t.Fatalf("within max_stale, origin hanging: %+v, %v", m, err)
	}
	release()
	h.settle(t, "someone/app", "v1")

	// Past it: the origin's failure is the answer.
	h.clock.Advance(10 * time.Minute)
	if _, err := h.tag(t, "someone/app", "v1"); !errors.Is(err, errDown) {
		t.Fatalf("past max_stale, origin down: %v, want the origin's error", err)
	}
	// ... and a slow origin is waited for.
	h.src.setOriginErr(nil)
	release = h.src.stall()
	t.Cleanup(release)
	held := h.src.nHeld()
	ch := h.async(t, context.Background(), "someone/app", "v1")
	eventually(t, "the revalidation to reach the origin", func() bool { return h.src.nHeld() > held })
	pending(t, ch, "a pull past max_stale")
	release()
	if a := <-ch; a.err != nil || a.m.Result == Stale || a.m.Digest != md {
		t.Fatalf("past max_stale, slow origin: %+v, %v; want the origin's answer", a.m, a.err)
	}
}

// A tag nothing is cached for asks the mirrors too once the origin is
// slower than hedge_delay; the first answer wins, and the origin's, when it
// comes, corrects the tag for the next pull.
func TestHedgeToMirrors(t *testing.T) {
	setup := func(t *testing.T, hedge time.Duration, mirrorHas bool) (h *harness, atOrigin, atMirror digest.Digest) {
		h = newHarness(t, func(o *Options) {
			o.HedgeDelay = hedge
			o.RevalidateWait = 20 * time.Millisecond
		})
		// The mirror lags: it still names the tag's previous digest.
		atMirror, _ = h.src.push("library/redis", "7", []byte("config one"))
		atOrigin, _ = h.src.push("library/redis", "7", []byte("config two"))
		if mirrorHas {
			h.src.mu.Lock()
			h.src.mirrorTag["library/redis:7"] = atMirror
			h.src.mu.Unlock()
		}
		return h, atOrigin, atMirror
	}

	t.Run("origin hangs, the mirror answers, the origin corrects", func(t *testing.T) {
		h, atOrigin, atMirror := setup(t, 20*time.Millisecond, true)
		release := h.src.stall()
		t.Cleanup(release)
		m, err := h.tag(t, "library/redis", "7")
		if err != nil || !m.TagFromMirror || m.Digest != atMirror || m.Source != "mirror" {
			t.Fatalf("cold pull, origin hanging: %+v, %v; want the mirror's %s", m, err, atMirror)
		}
		// The next pull, the origin still silent, is not another hedge: the
		// mirror's answer is cached, and served stale.
		m, err = h.tag(t, "library/redis", "7")
		if err != nil || m.Result != Stale || m.Digest != atMirror {
			t.Fatalf("second pull, origin hanging: %+v, %v", m, err)
		}
		release()
		h.settle(t, "library/redis", "7")
		m, err = h.tag(t, "library/redis", "7")
		if err != nil || m.Result != Hit || m.TagFromMirror || m.Digest != atOrigin {
			t.Fatalf("after the origin answered: %+v, %v; want a hit on the origin's %s", m, err, atOrigin)
		}
		if n := h.src.n("tag at mirror"); n != 1 {
			t.Errorf("mirror asked %d times, want 1", n)
		}
	})

	t.Run("origin slow, the mirror lacks the tag: the origin's answer", func(t *testing.T) {
		h, atOrigin, _ := setup(t, 20*time.Millisecond, false)
		release := h.src.stall()
		t.Cleanup(release)
		ch := h.async(t, context.Background(), "library/redis", "7")
		eventually(t, "the hedge to the mirror", func() bool { return h.src.n("tag at mirror") == 1 })
		pending(t, ch, "a cold pull the mirror cannot answer")
		release()
		if a := <-ch; a.err != nil || a.m.TagFromMirror || a.m.Digest != atOrigin {
			t.Fatalf("got %+v, %v; want the origin's %s", a.m, a.err, atOrigin)
		}
	})

	t.Run("origin answers within hedge_delay: the mirror is not asked", func(t *testing.T) {
		h, atOrigin, _ := setup(t, time.Hour, true)
		m, err := h.tag(t, "library/redis", "7")
		if err != nil || m.TagFromMirror || m.Digest != atOrigin {
			t.Fatalf("got %+v, %v", m, err)
		}
		if n := h.src.n("tag at mirror"); n != 0 {
			t.Errorf("mirror asked %d times", n)
		}
	})

	t.Run("origin down at once: the mirror without waiting for the hedge", func(t *testing.T) {
		h, _, atMirror := setup(t, time.Hour, true)
		h.src.setOriginErr(errDown)
		m, err := h.tag(t, "library/redis", "7")
		if err != nil || !m.TagFromMirror || m.Digest != atMirror {
			t.Fatalf("got %+v, %v", m, err)
		}
	})

	// A tag a mirror resolved was never checked at the origin, so it is
	// always past max_stale: while the origin is down its pulls go back to
	// the mirror, as the first one did, rather than fail.
	t.Run("mirror-resolved tag with max_stale, origin still down", func(t *testing.T) {
		h, _, atMirror := setup(t, 20*time.Millisecond, true)
		h.cache.opt.MaxStale = time.Hour
		h.src.setOriginErr(errDown)
		for i := range 3 {
			m, err := h.tag(t, "library/redis", "7")
			if err != nil || !m.TagFromMirror || m.Digest != atMirror {
				t.Fatalf("pull %d: %+v, %v; want the mirror's answer again", i, m, err)
			}
		}
		h.src.setOriginErr(nil)
		release := h.src.stall()
		t.Cleanup(release)
		if m, err := h.tag(t, "library/redis", "7"); err != nil || !m.TagFromMirror {
			t.Fatalf("origin hanging: %+v, %v; want the mirror's answer after hedge_delay", m, err)
		}
	})
}

// A client that gives up on a cold pull does not take the revalidation
// with it: the cache finishes it, and the next pull is a hit.
func TestRevalidationOutlivesItsClient(t *testing.T) {
	h := newHarness(t, nil)
	md, _ := h.src.push("someone/app", "v1", []byte("config"))
	release := h.src.stall()
	t.Cleanup(release)
	ctx, cancel := context.WithCancel(context.Background())
	ch := h.async(t, ctx, "someone/app", "v1")
	eventually(t, "the origin to be asked", func() bool { return h.src.nHeld() == 1 })
	cancel()
	if a := <-ch; !errors.Is(a.err, context.Canceled) {
		t.Fatalf("cancelled client: %+v, %v", a.m, a.err)
	}
	release()
	h.settle(t, "someone/app", "v1")
	if m, err := h.tag(t, "someone/app", "v1"); err != nil || m.Result != Hit || m.Digest != md {
		t.Fatalf("next pull: %+v, %v; want a hit", m, err)
	}
}

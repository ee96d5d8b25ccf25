package upstream

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/regcache/regcache/internal/regerr"
)

// Budget is what the origin last said about its pull rate limit. Docker Hub
// sends it on manifest responses:
//
//	ratelimit-limit: 100;w=21600
//	ratelimit-remaining: 76;w=21600
//	docker-ratelimit-source: 203.0.113.7
//
// The limits have changed more than once, so nothing here is hard-coded.
type Budget struct {
	Limit     int           // pulls allowed per window
	Remaining int           // pulls left in the current window
	Window    time.Duration // from the ";w=" parameter; 0 if not sent
	Source    string        // docker-ratelimit-source: the IP or account the limit is counted for
	Known     bool          // false until a response carried the headers, or after one said there is no limit
	UpdatedAt time.Time     // when a response last changed the budget
	// RetryUntil is when counted pulls (manifest GETs) may be sent again,
	// after a pull-limit 429 (its Retry-After, or a backoff when absent).
	// The free HEADs that resolve tags go on meanwhile.
	RetryUntil time.Time
	// Paused is when each class of request may be sent again after a bare
	// 429 (an abuse limit) or a 503 with Retry-After on that class: a 429
	// on a blob holds back blobs, not the manifest checks that keep tags
	// fresh.
	Paused [numClasses]time.Time
}

// Class is a class of origin request that a pause applies to.
type Class uint8

const (
	ClassManifests Class = iota // manifest HEAD and GET
	ClassBlobs                  // blob GET and HEAD
	ClassOther                  // tags, referrers, the /v2/ ping
	numClasses
)

var classNames = [numClasses]string{"manifests", "blobs", "other"}

func (c Class) String() string { return classNames[c] }

func classOf(path string) Class {
	switch {
	case strings.Contains(path, "/manifests/"):
		return ClassManifests
	case strings.Contains(path, "/blobs/"):
		return ClassBlobs
	}
	return ClassOther
}

// backoff429 is how long to leave the origin alone after a 429 that did not
// say when to come back; it doubles for each further 429 in a row.
const (
	backoff429Min = 30 * time.Second
	backoff429Max = 15 * time.Minute
)

// budgetTracker keeps one registry's Budget. Methods are safe for concurrent use.
type budgetTracker struct {
	host     string // only responses from this host:port count
	now      func() time.Time
	maxPause time.Duration // the longest Retry-After honoured

	mu       sync.Mutex
	b        Budget
	last429s int // 429s in a row, for the backoff when Retry-After is missing
	// pausedKind is the kind to report while a class is paused.
	pausedKind [numClasses]regerr.Kind
	// onChange hears of every change an answer made (to share it).
	onChange func(Budget)
}

func newBudgetTracker(host string, now func() time.Time, maxPause time.Duration) *budgetTracker {
	if maxPause <= 0 {
		maxPause = DefaultMaxRetryAfter
	}
	return &budgetTracker{host: host, now: now, maxPause: maxPause}
}

func (t *budgetTracker) get() Budget {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.b
}

// observe updates the budget from one origin response.
func (t *budgetTracker) observe(req *http.Request, resp *http.Response) {
	t.mu.Lock()
	before := t.b
	t.observeLocked(req, resp)
	after, fn := t.b, t.onChange
	t.mu.Unlock()
	if fn != nil && after != before {
		fn(after)
	}
}

// merge applies a budget another replica saw: the newer counts win, and a
// pause lasts until the later of the two ends.
func (t *budgetTracker) merge(o Budget) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if o.UpdatedAt.After(t.b.UpdatedAt) {
		t.b.Limit, t.b.Remaining, t.b.Window, t.b.Source, t.b.Known, t.b.UpdatedAt =
			o.Limit, o.Remaining, o.Window, o.Source, o.Known, o.UpdatedAt
	}
	if o.RetryUntil.After(t.b.RetryUntil) {
		t.b.RetryUntil = o.RetryUntil
	}
	maxUntil := t.now().Add(t.maxPause)
	for c := range t.b.Paused {
		if until := o.Paused[c]; until.After(t.b.Paused[c]) {
			if until.After(maxUntil) {
				until = maxUntil
			}
			t.b.Paused[c] = until
			t.pausedKind[c] = regerr.RateLimited
		}
	}
}

func (t *budgetTracker) observeLocked(req *http.Request, resp *http.Response) {
	h := resp.Header
	limit, lw, hasLimit := parseRateLimit(h.Get("Ratelimit-Limit"))
	remaining, rw, hasRemaining := parseRateLimit(h.Get("Ratelimit-Remaining"))
	class := classOf(req.URL.Path)
	now := t.now()

	switch {
	case hasLimit || hasRemaining:
		if hasLimit {
			t.b.Limit = limit
		}
		if hasRemaining {
			t.b.Remaining = remaining
		}
		if w := max(lw, rw); w > 0 {
			t.b.Window = w
		}
		t.b.Source = h.Get("Docker-Ratelimit-Source")
		t.b.Known = true
		t.b.UpdatedAt = now
	case class == ClassManifests && resp.StatusCode/100 == 2:
		// Docker Hub documents that a manifest response without the headers
		// means no limit applies (e.g. a paid account). Other responses
		// (blobs, /v2/, tokens) never carry them, so they say nothing.
		if t.b.Known {
			t.b.Known = false
			t.b.UpdatedAt = now
		}
	}

	switch resp.StatusCode {
	case http.StatusTooManyRequests:
		t.last429s++
		d, ok := parseRetryAfter(h.Get("Retry-After"), now)
		if !ok {
			d = min(backoff429Min<<min(t.last429s-1, 10), backoff429Max)
		}
		d = min(d, t.maxPause)
		pullLimit := req.Method == http.MethodGet && class == ClassManifests && (hasLimit || hasRemaining)
		if pullLimit {
			t.b.RetryUntil = now.Add(d)
		} else {
			t.pause(req.URL.Path, class, now.Add(d), regerr.RateLimited)
		}
		t.b.UpdatedAt = now
	case http.StatusServiceUnavailable:
		if d, ok := parseRetryAfter(h.Get("Retry-After"), now); ok {
			t.pause(req.URL.Path, class, now.Add(min(d, t.maxPause)), regerr.Unavailable)
			t.b.UpdatedAt = now
		}
	default:
		if resp.StatusCode/100 == 2 {
			t.last429s = 0
		}
	}
}

// pause holds back class until; a refused ping (GET /v2/), which every
// request's authentication starts with, holds back every class.
func (t *budgetTracker) pause(path string, class Class, until time.Time, kind regerr.Kind) {
	if path == "/v2/" {
		for c := range t.b.Paused {
			t.b.Paused[c], t.pausedKind[c] = until, kind
		}
		return
	}
	t.b.Paused[class], t.pausedKind[class] = until, kind
}

// gate refuses a request the origin asked us not to send yet, without
// sending it: after a 429, asking again before Retry-After only extends the
// penalty. It returns the kind to report and how long is left, or ok when
// the request may go.
func (t *budgetTracker) gate(method, path string) (kind regerr.Kind, wait time.Duration, ok bool) {
	now := t.now()
	class := classOf(path)
	t.mu.Lock()
	defer t.mu.Unlock()
	if until := t.b.Paused[class]; now.Before(until) {
		return t.pausedKind[class], until.Sub(now), false
	}
	counted := method == http.MethodGet && class == ClassManifests
	if counted && now.Before(t.b.RetryUntil) {
		return regerr.RateLimited, t.b.RetryUntil.Sub(now), false
	}
	return 0, 0, true
}

// belowReserve reports whether the known remaining budget is at or below
// reserve. Docker Hub's windows are rolling, so a figure older than its
// window no longer bounds anything and does not count.
func (t *budgetTracker) belowReserve(reserve int) bool {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.b.Known {
		return false
	}
	if t.b.Window > 0 && now.Sub(t.b.UpdatedAt) > t.b.Window {
		return false
	}
	return t.b.Remaining <= reserve
}

// parseRateLimit reads one ratelimit-* header value. Docker Hub sends
// "100;w=21600"; the IETF draft allows a list of quota policies such as
// "100, 100;w=21600, 1000;w=86400", where the first number is the one in
// force and the w= parameters describe windows. The first item's number is
// returned with the first window found.
func parseRateLimit(v string) (n int, window time.Duration, ok bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, 0, false
	}
	items := strings.Split(v, ",")
	first, params, _ := strings.Cut(items[0], ";")
	n, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || n < 0 {
		return 0, 0, false
	}
	window = parseWindow(params)
	for _, it := range items[1:] {
		if window > 0 {
			break
		}
		_, p, _ := strings.Cut(it, ";")
		window = parseWindow(p)
	}
	return n, window, true
}

func parseWindow(params string) time.Duration {
	for p := range strings.SplitSeq(params, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "w") {
			continue
		}
		secs, err := strconv.Atoi(strings.Trim(strings.TrimSpace(val), `"`))
		if err == nil && secs > 0 {
			return time.Duration(secs) * time.Second
		}
	}
	return 0
}

// rateLimitTransport hands every response from the origin host to the
// budget tracker. It sits below the auth transport so it also sees the 401s
// and pings, and it ignores other hosts (token servers, blob CDNs): their
// Retry-After says nothing about the registry.
type rateLimitTransport struct {
	inner   http.RoundTripper
	tracker *budgetTracker
}

func (t *rateLimitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.inner.RoundTrip(req)
	if err == nil && sameHost(req.URL, t.tracker.host) {
		t.tracker.observe(req, resp)
	}
	return resp, err
}

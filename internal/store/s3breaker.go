package store

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"
)

// s3Breaker stands between the S3 client and the network: after the store
// failed twice in a row (no answer, or 5xx), calls fail at once for a
// backoff (1 s, doubling to 15 s) instead of each waiting for the
// timeouts, so a store that hangs costs clients a fast 503, not 30 s each;
// then one call probes it. A store that answers closes it again.
type s3Breaker struct {
	inner interface {
		Do(*http.Request) (*http.Response, error)
	}
	now func() time.Time

	mu        sync.Mutex
	failures  int
	openUntil time.Time
	probing   bool
}

// errStoreBackoff is the error of calls refused while the breaker is open.
var errStoreBackoff = errors.New("the object store failed repeatedly; not asked again until its backoff ends")

const (
	s3BreakerThreshold = 2
	s3BreakerMin       = time.Second
	s3BreakerMax       = 15 * time.Second
)

func (b *s3Breaker) Do(req *http.Request) (*http.Response, error) {
	probe, ok := b.allow()
	if !ok {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, errStoreBackoff
	}
	resp, err := b.inner.Do(req)
	failed := err != nil || resp.StatusCode >= 500
	if err != nil && errors.Is(req.Context().Err(), context.Canceled) {
		failed = false // the caller gave up: says nothing about the store
	}
	b.done(probe, failed)
	return resp, err
}

func (b *s3Breaker) allow() (probe, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openUntil.IsZero() {
		return false, true
	}
	if b.now().Before(b.openUntil) || b.probing {
		return false, false
	}
	b.probing = true
	return true, true
}

func (b *s3Breaker) done(probe, failed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe {
		b.probing = false
	}
	if !failed {
		b.failures, b.openUntil = 0, time.Time{}
		return
	}
	b.failures++
	if probe || b.failures >= s3BreakerThreshold {
		d := min(s3BreakerMin<<min(b.failures-s3BreakerThreshold, 4), s3BreakerMax)
		b.openUntil = b.now().Add(d)
	}
}

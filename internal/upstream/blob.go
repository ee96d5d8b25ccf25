package upstream

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
)

// Blob is a blob body from the best source that had it. Reading it verifies
// it: Read returns io.EOF only once every byte has hashed to the digest and
// the size is right. Wrong bytes fail the last Read with a BadContent error,
// more bytes than expected fail with TooLarge, and a transfer slower than
// Limits.MinRate fails with Unavailable. The outcome settles the source's
// circuit breaker and, for a mirror, its memory of bad content; a body
// closed before its end says nothing about the source. The caller must
// Close it.
type Blob struct {
	io.ReadCloser
	Size   int64  // expected size; -1 when neither the caller nor the source said
	Source string // SourceOrigin, or the mirror that answered
}

// errTooSlow is why a transfer below the minimum rate was cut.
var errTooSlow = errors.New("transfer slower than the minimum rate")

// Blob opens blob d of repo from the first mirror that carries repo and has
// it, else from the origin, following redirects to other hosts (CDNs)
// without the Authorization header. size is the size a descriptor states,
// or -1: a source that announces another size is skipped, and a body is
// cut at the expected size (or at Limits.MaxBlobSize when none is known).
func (r *Registry) Blob(ctx context.Context, repo ref.Repo, d digest.Digest, size int64) (*Blob, error) {
	var b *Blob
	err := r.fromSources(ctx, "GET blob", repo, d, func(e *endpoint, c call, t *ticket) error {
		var err error
		b, err = r.openBlob(ctx, e, c, t, d, size)
		return err
	})
	return b, err
}

func (r *Registry) openBlob(ctx context.Context, e *endpoint, c call, t *ticket, d digest.Digest, size int64) (*Blob, error) {
	if !d.Algorithm().Available() {
		return nil, c.err(regerr.Invalid, fmt.Sprintf("unsupported digest algorithm %q", d.Algorithm()))
	}
	bctx, cancel := context.WithCancelCause(ctx)
	resp, err := e.send(bctx, c, http.MethodGet, "/v2/"+c.repo+"/blobs/"+d.String(), nil, nil)
	if err != nil {
		cancel(nil)
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		cancel(nil)
		return nil, c.responseError(resp, e.red)
	}
	switch {
	case size >= 0 && resp.ContentLength >= 0 && resp.ContentLength != size:
		resp.Body.Close()
		cancel(nil)
		return nil, c.err(regerr.BadContent, fmt.Sprintf("Content-Length %d, but the blob's size is %d", resp.ContentLength, size))
	case size < 0 && resp.ContentLength > r.limits.MaxBlobSize:
		resp.Body.Close()
		cancel(nil)
		return nil, c.err(regerr.TooLarge, fmt.Sprintf("blob of %d bytes is over the %d-byte limit", resp.ContentLength, r.limits.MaxBlobSize))
	case size < 0:
		size = resp.ContentLength
	}
	limit := size
	if limit < 0 {
		limit = r.limits.MaxBlobSize
	}
	v := &verifier{
		ctx: bctx, cancel: cancel, body: resp.Body, c: c, t: t, want: d, size: size, limit: limit,
		h: d.Algorithm().Hash(), bad: e.bad, red: e.red,
		onMismatch: func() { r.countMismatch(e.source) },
	}
	if r.m != nil {
		v.fetched = r.m.UpstreamBytes.WithLabelValues(r.name, e.source, "blob")
		if e.mirror {
			r.m.MirrorHits.WithLabelValues(r.name, e.source, "blob").Inc()
		}
	}
	v.watch(r.limits.MinRate, r.limits.RateWindow)
	t.deferred = true
	return &Blob{ReadCloser: v, Size: size, Source: e.source}, nil
}

// verifier hashes a blob body as the caller reads it, enforces its size
// and a minimum transfer rate, and settles the source's breaker when the
// body ends, in the manner of go-containerregistry's internal/verify.
type verifier struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	body   io.ReadCloser
	c      call
	t      *ticket
	want   digest.Digest
	size   int64 // -1 unknown
	limit  int64
	h      hash.Hash
	bad    *badContent // nil for the origin
	red    redactor

	onMismatch func()
	fetched    prometheus.Counter

	n        int64
	err      error      // the body's end, once known: io.EOF or the failure
	mu       sync.Mutex // guards progress and the watchdog against Close
	progress int64
	timer    *time.Timer
	done     bool
}

// watch cancels the transfer when fewer than minRate*window bytes arrive
// in a window.
func (v *verifier) watch(minRate int64, window time.Duration) {
	if minRate <= 0 || window <= 0 {
		return
	}
	// In float: a window under a second must not round the floor to 0.
	floor := int64(float64(minRate) * window.Seconds())
	var last int64
	var check func()
	check = func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		if v.done {
			return
		}
		if v.progress-last < floor {
			v.cancel(fmt.Errorf("%w: %d bytes in %s", errTooSlow, v.progress-last, window))
			return
		}
		last = v.progress
		v.timer = time.AfterFunc(window, check)
	}
	v.mu.Lock()
	v.timer = time.AfterFunc(window, check)
	v.mu.Unlock()
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		// The end is decided once: a Read after a failure must not reach
		// the body's EOF again and pass, nor count the mismatch twice.
		return 0, v.err
	}
	if rest := v.limit - v.n + 1; int64(len(p)) > rest {
		// Read one byte past the limit at most, to tell "exactly the
		// size" from "more".
		p = p[:rest]
	}
	n, err := v.body.Read(p)
	v.n += int64(n)
	v.h.Write(p[:n])
	if v.fetched != nil && n > 0 {
		v.fetched.Add(float64(n))
	}
	v.mu.Lock()
	v.progress = v.n
	v.mu.Unlock()
	if v.n > v.limit {
		return n, v.fail(outcomeFailure, v.c.err(regerr.TooLarge, fmt.Sprintf("the body is longer than %d bytes", v.limit)))
	}
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, io.EOF):
		if v.size >= 0 && v.n != v.size {
			return n, v.fail(outcomeFailure, v.c.err(regerr.BadContent, fmt.Sprintf("the body ended after %d of %d bytes", v.n, v.size)))
		}
		if got := digest.NewDigest(v.want.Algorithm(), v.h); got != v.want {
			if v.bad != nil {
				v.bad.add(v.want)
			}
			v.onMismatch()
			return n, v.fail(outcomeFailure, v.c.err(regerr.BadContent, fmt.Sprintf("the blob hashes to %s; discarded", got)))
		}
		v.settle(outcomeSuccess, nil)
		v.err = io.EOF
		return n, io.EOF
	default:
		e := v.c.transportError(v.ctx, err, v.red)
		oc := outcomeFailure
		if e.Kind == regerr.Internal {
			oc = outcomeNeutral // the caller gave up
		}
		return n, v.fail(oc, e)
	}
}

func (v *verifier) fail(oc outcome, err error) error {
	v.settle(oc, err)
	v.err = err
	return err
}

// settle records the outcome once (err is the failure, if it is one) and
// stops the watchdog.
func (v *verifier) settle(oc outcome, err error) {
	v.t.finish(oc, 0, err)
	v.mu.Lock()
	if v.timer != nil {
		v.timer.Stop()
	}
	v.mu.Unlock()
}

// Close abandons the body; a body not read to its end says nothing about
// the source.
func (v *verifier) Close() error {
	v.settle(outcomeNeutral, nil)
	v.mu.Lock()
	v.done = true
	v.mu.Unlock()
	v.cancel(nil)
	return v.body.Close()
}

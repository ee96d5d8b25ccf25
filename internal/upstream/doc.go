// Package upstream is regcache's client for the registries it caches: an
// origin (Docker Hub, ghcr.io, ...) and its mirrors. It owns one job:
// verified content from the best source.
//
// It speaks only the pull side of the OCI distribution API and is built as a
// stack of small http.RoundTrippers, in the style of go-containerregistry's
// transport package, from the wire up:
//
//	base *http.Transport        keep-alives, dial/TLS/header timeouts, HTTP/2
//	loggingTransport            one slog debug line per request, never headers
//	rateLimitTransport          origin only: reads ratelimit-* and Retry-After
//	schemePin                   only the configured scheme for the configured
//	                            host: no https try of an http:// upstream, no
//	                            http downgrade of an https:// one
//	ggcr transport.NewWithContext
//	                            ping, then anonymous, Basic or Bearer; one per
//	                            repository scope, cached so tokens are reused
//	http.Client                 redirects, dropping Authorization across hosts
//
// The files, in the order a request meets them: registry.go (the calls the
// cache makes), sources.go (which source is asked: mirrors that carry the
// repository, in order, then the origin; breakers), endpoint.go (one HTTP
// exchange with one source, and its verification), blob.go (the verifying
// blob reader), error.go (classifying answers into regerr kinds),
// ratelimit.go (the origin's budget and pauses), transport.go and auth.go.
//
// Content addressed by digest (blobs, manifests by digest) may come from
// mirrors, each with its repository prefix (ECR Public serves library/node
// as docker/library/node). A tag is resolved at the origin with HeadManifest,
// a HEAD that Docker Hub does not count; ManifestByTag is the counted GET.
// Manifests are read whole and verified before they are returned; a blob is
// returned as a reader that verifies as it is read and settles the source's
// circuit breaker at its end. After a 429 the origin is left alone until its
// Retry-After has passed, for the class of request it was about.
//
// Every failure is a *regerr.Error with its kind (not found, rate limited,
// unavailable, bad content, ...), so callers decide "serve stale", "not
// found" or "rate limited" without parsing strings. An upstream's own
// message is redacted of credentials and kept for logs only.
//
// New performs no network I/O: regcache must start while every upstream is
// down. Nothing here retries a request that Docker Hub counts as a pull; the
// only resend is the one go-containerregistry makes after a 401 to refresh an
// expired token, and a 401 is not counted.
package upstream

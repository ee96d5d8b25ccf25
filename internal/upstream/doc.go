// Package upstream is regcache's client for the registries it caches: an
// origin (Docker Hub, ghcr.io, ...) and its mirrors.
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
// Content addressed by digest (blobs, manifests by digest) may come from
// mirrors: each configured mirror that carries the repository is asked in
// order, with its repository prefix (ECR Public serves library/node as
// docker/library/node), then the origin. A tag is always resolved at the
// origin, with a HEAD that Docker Hub does not count; FetchManifest chains
// the two so an official image costs no counted pull. Every source has a
// circuit breaker, and after a 429 the origin is left alone until its
// Retry-After has passed.
//
// Every failed call returns an *Error carrying the registry's OCI error code,
// so callers decide "serve stale", "not found" or "rate limited" with
// IsUnavailable, IsNotFound and IsRateLimited instead of parsing strings.
//
// New performs no network I/O: regcache must start while every upstream is
// down. Nothing here retries a request that Docker Hub counts as a pull; the
// only resend is the one go-containerregistry makes after a 401 to refresh an
// expired token, and a 401 is not counted.
package upstream

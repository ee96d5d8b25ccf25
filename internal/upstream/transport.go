package upstream

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"
)

// newBaseTransport is the wire-level transport used when Config.Transport is
// nil. Each Registry gets its own, so one slow upstream cannot use up another's
// idle connections. There is no overall timeout: blob bodies may stream for
// minutes, and callers bound each call with their context instead.
func newBaseTransport() *http.Transport {
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		// Honour HTTPS_PROXY/NO_PROXY: CI fleets often reach the internet
		// only through a proxy.
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// loggingTransport logs one debug line per request: method, host, path and
// status. It never logs headers or query strings, which is where credentials
// and tokens travel.
type loggingTransport struct {
	inner  http.RoundTripper
	logger *slog.Logger
	source string
}

func (t *loggingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.inner.RoundTrip(req)
	attrs := []any{
		"source", t.source,
		"method", req.Method,
		"host", req.URL.Host,
		"path", req.URL.Path,
		"duration", time.Since(start),
	}
	if err != nil {
		t.logger.DebugContext(req.Context(), "upstream request failed", append(attrs, "err", err)...)
		return resp, err
	}
	t.logger.DebugContext(req.Context(), "upstream request", append(attrs, "status", resp.StatusCode)...)
	return resp, nil
}

// maxRedirects matches net/http's default.
const maxRedirects = 10

// checkRedirect follows redirects (registries send blobs to CDNs with 307),
// but never carries the Authorization header to another scheme, host or
// port than the upstream's it was meant for. net/http strips it only when
// the host name changes to one that is not a subdomain; it keeps it when
// the port or the scheme differs (so https to http would send it in
// clear), and an auth transport that sets it on the request it is given
// has it copied into the redirect.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return errors.New("stopped after 10 redirects")
	}
	if !sameOrigin(req.URL, via[0].URL) {
		req.Header.Del("Authorization")
	}
	return nil
}

// sameOrigin compares scheme, host and port, filling in default ports.
func sameOrigin(a, b *url.URL) bool {
	return a.Scheme == b.Scheme && canonicalHost(a.Scheme, a.Host) == canonicalHost(b.Scheme, b.Host)
}

// sameHost compares u's host:port with host, filling in default ports so
// "example.com" and "example.com:443" match for https.
func sameHost(u *url.URL, host string) bool {
	return canonicalHost(u.Scheme, u.Host) == canonicalHost(u.Scheme, host)
}

func canonicalHost(scheme, host string) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	port := "443"
	if scheme == "http" {
		port = "80"
	}
	return net.JoinHostPort(host, port)
}

// schemePin sends requests for the configured host only by the configured
// scheme. ggcr's ping tries https and http side by side for a registry it
// thinks may be plain HTTP (one given as http://, or any localhost or .local
// name) and keeps whichever answers. Without the pin, an http:// upstream
// gets a TLS handshake attempt on every new scope, and an https:// upstream
// on a local name could be downgraded to plain HTTP, credentials included.
// The refused request never dials, so it costs nothing and logs nothing.
type schemePin struct {
	inner  http.RoundTripper
	scheme string
	host   string // as configured: "registry.local" or "127.0.0.1:5000"
	canon  string // host:port with the configured scheme's default port
}

func pinScheme(base url.URL, inner http.RoundTripper) http.RoundTripper {
	return &schemePin{inner: inner, scheme: base.Scheme, host: base.Host, canon: canonicalHost(base.Scheme, base.Host)}
}

func (p *schemePin) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != p.scheme && (req.URL.Host == p.host || canonicalHost(req.URL.Scheme, req.URL.Host) == p.canon) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("%s is configured as %s://; not sending %s", req.URL.Host, p.scheme, req.URL.Scheme)
	}
	return p.inner.RoundTrip(req)
}

package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/regcache/regcache/internal/metrics"
)

// newBaseTransport is the wire-level transport used when Config.Transport is
// nil. Each Registry gets its own, so one slow upstream cannot use up another's
// idle connections. There is no overall timeout: blob bodies may stream for
// minutes, and callers bound each call with their context instead.
func newBaseTransport(guard *dialGuard, l Limits) *http.Transport {
	return &http.Transport{
		// Honour HTTPS_PROXY/NO_PROXY: CI fleets often reach the internet
		// only through a proxy.
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           guard.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   l.ConnectTimeout,
		ResponseHeaderTimeout: l.HeaderTimeout,
		ExpectContinueTimeout: time.Second,
	}
}

// loggingTransport logs one debug line per request (method, host, path and
// status) and counts it in regcache_upstream_requests_total. It never logs
// headers or query strings, which is where credentials and tokens travel.
type loggingTransport struct {
	inner    http.RoundTripper
	logger   *slog.Logger
	source   string
	registry string
	m        *metrics.Metrics // nil: not counted
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
	status := "error"
	if err == nil {
		status = strconv.Itoa(resp.StatusCode)
	}
	if t.m != nil {
		t.m.UpstreamRequests.WithLabelValues(t.registry, t.source, req.Method, classOf(req.URL.Path).String(), status).Inc()
	}
	if err != nil {
		t.logger.DebugContext(req.Context(), "upstream request failed", append(attrs, "err", err)...)
		return resp, err
	}
	t.logger.DebugContext(req.Context(), "upstream request", append(attrs, "status", resp.StatusCode)...)
	return resp, nil
}

// dialGuard connects only where an upstream may send regcache: anywhere
// public, and to a loopback, private, link-local or unspecified address
// only when it is one of the configured hosts (the origin, its mirrors, the
// proxy) or the registry's config allows it. A redirect (or a token realm)
// pointing at 127.0.0.1 or the cloud metadata service is thus refused, and
// because the check is made on the address actually dialled, a public name
// that resolves to a private address is refused too.
type dialGuard struct {
	dialer       *net.Dialer
	resolver     *net.Resolver
	allowed      map[string]bool // host:port always dialled as they are
	allowPrivate bool
	registry     string // for the error: which config key to set
}

func newDialGuard(registry string, allowPrivate bool, connect time.Duration, hosts ...string) *dialGuard {
	g := &dialGuard{
		dialer:       &net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second},
		resolver:     net.DefaultResolver,
		allowed:      map[string]bool{},
		allowPrivate: allowPrivate,
		registry:     registry,
	}
	for _, h := range hosts {
		g.allowed[h] = true
	}
	return g
}

// errPrivateAddress is the cause of a refused connection.
var errPrivateAddress = errors.New("a loopback, private or link-local address")

func (g *dialGuard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if g.allowPrivate || g.allowed[addr] {
		return g.dialer.DialContext(ctx, network, addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	ips, err := g.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	for _, ip := range ips {
		if !publicAddr(ip) {
			return nil, fmt.Errorf("refusing to connect to %s (%s): %w; set registries.%s.allow_private_redirects if the upstream may send regcache there",
				host, ip, errPrivateAddress, g.registry)
		}
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("%s: no address", host)
	}
	// Dial the address checked, not the name again: a second lookup could
	// answer differently.
	return g.dialer.DialContext(ctx, network, net.JoinHostPort(ips[0].String(), port))
}

// publicAddr reports whether ip is a routable unicast address.
func publicAddr(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsGlobalUnicast() && !ip.IsPrivate() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() &&
		!sharedAddressSpace.Contains(ip)
}

// sharedAddressSpace is RFC 6598 carrier-grade NAT space, private in all
// but name.
var sharedAddressSpace = netip.MustParsePrefix("100.64.0.0/10")

// privateHost reports whether a configured host names a loopback or private
// address (or localhost): an upstream there is an internal registry, whose
// redirects may stay internal.
func privateHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && !publicAddr(ip)
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

// proxyHosts are the proxies named in the environment (HTTPS_PROXY,
// HTTP_PROXY), which regcache must be able to dial wherever they are.
func proxyHosts() []string {
	var out []string
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"} {
		v := os.Getenv(k)
		if v == "" {
			continue
		}
		if !strings.Contains(v, "://") {
			v = "http://" + v
		}
		if u, err := url.Parse(v); err == nil && u.Host != "" {
			out = append(out, canonicalHost(u.Scheme, u.Host))
		}
	}
	return out
}

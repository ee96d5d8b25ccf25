package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	// Register the hashes go-digest verifies with.
	_ "crypto/sha256"
	_ "crypto/sha512"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Config describes one upstream registry.
type Config struct {
	Name      string              // registry name as configured, e.g. "docker.io"
	URL       string              // e.g. "https://registry-1.docker.io" or "http://127.0.0.1:5001"
	Auth      authn.Authenticator // nil = anonymous
	Transport http.RoundTripper   // nil = a tuned *http.Transport
	Logger    *slog.Logger        // nil = discard

	// Mirrors are asked, in order, for content addressed by digest (blobs,
	// manifests by digest) before the origin. They never see Auth.
	Mirrors []MirrorConfig
	// Reserve is the number of counted pulls to keep for true misses; see
	// BelowReserve.
	Reserve int
}

// SourceOrigin is the Source of content that came from the origin registry.
const SourceOrigin = "origin"

// MaxManifestSize is the most GetManifest reads. The distribution spec lets
// registries refuse manifests over 4 MiB; twice that leaves room for large
// indexes while keeping a hostile upstream from filling memory.
const MaxManifestSize = 8 << 20

// defaultManifestAccept is sent when the caller names no media types. Without
// an Accept header some registries fall back to (or convert to) Docker
// schema 1, which would change digests.
var defaultManifestAccept = []string{
	ocispec.MediaTypeImageIndex,
	ocispec.MediaTypeImageManifest,
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

// Registry is a client for one upstream registry. It is safe for concurrent use.
type Registry struct {
	name    string
	log     *slog.Logger
	origin  *endpoint
	mirrors []*endpoint
	budget  *budgetTracker
	reserve int
	now     func() time.Time
}

// Manifest is a manifest exactly as the upstream sent it.
type Manifest struct {
	ocispec.Descriptor
	Data   []byte
	Source string // SourceOrigin, or the mirror that answered
}

// Blob is an open blob body. The caller closes Body and verifies the digest.
type Blob struct {
	Body   io.ReadCloser
	Size   int64  // Content-Length, or -1 when unknown
	Source string // SourceOrigin, or the mirror that answered
	// Judge takes the caller's verdict on a body from GetBlobUnverified,
	// once it has been read: nil when it hashed to the digest,
	// ErrContentMismatch when it did not, or the read error. It feeds the
	// mirror's breaker and its memory of bad content. Never nil; a body
	// closed without a verdict says nothing about its source.
	Judge func(err error)
}

// ErrContentMismatch is the verdict for a blob whose bytes do not hash to
// the digest asked for.
var ErrContentMismatch = errors.New("content does not match its digest")

// New builds a client for cfg. It does no network I/O, so regcache starts
// even when every upstream is down; the first request pings and authenticates.
func New(cfg Config) (*Registry, error) {
	return newRegistry(cfg, time.Now)
}

// newRegistry is New with a clock, which tests replace to drive breakers and
// Retry-After without sleeping.
func newRegistry(cfg Config, now func() time.Time) (*Registry, error) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	base, reg, err := parseRegistryURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", cfg.Name, err)
	}
	regName := cfg.Name
	if regName == "" {
		regName = base.Host
	}
	logger = logger.With("registry", regName)
	if cfg.Reserve < 0 {
		return nil, fmt.Errorf("upstream %q: reserve must not be negative", regName)
	}

	wire := cfg.Transport
	if wire == nil {
		wire = newBaseTransport()
	}
	budget := newBudgetTracker(base.Host, now)
	var rt http.RoundTripper = &loggingTransport{inner: wire, logger: logger, source: SourceOrigin}
	rt = &rateLimitTransport{inner: rt, tracker: budget}

	r := &Registry{
		name:    regName,
		log:     logger,
		budget:  budget,
		reserve: cfg.Reserve,
		now:     now,
		origin: &endpoint{
			registry: regName,
			source:   SourceOrigin,
			base:     *base,
			scopes:   newScopeCache(reg, cfg.Auth, pinScheme(*base, rt), 0),
			log:      logger,
			breaker:  newBreaker(now),
			budget:   budget,
		},
	}
	seen := map[string]bool{SourceOrigin: true}
	for i, mc := range cfg.Mirrors {
		m, err := newMirror(regName, mc, wire, logger, now)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: mirrors[%d]: %w", regName, i, err)
		}
		if seen[m.source] {
			return nil, fmt.Errorf("upstream %q: mirrors[%d]: duplicate mirror name %q", regName, i, m.source)
		}
		seen[m.source] = true
		r.mirrors = append(r.mirrors, m)
	}
	return r, nil
}

// parseRegistryURL checks a registry URL: http or https, a host, no path
// (the API lives at /v2/ on the root) and no user info (credentials belong in
// Auth, where they never reach a log line).
func parseRegistryURL(raw string) (*url.URL, name.Registry, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// Do not echo raw: it might hold a password.
		return nil, name.Registry{}, errors.New("invalid registry URL")
	}
	if u.User != nil {
		return nil, name.Registry{}, errors.New("registry URL must not contain credentials; use auth")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, name.Registry{}, fmt.Errorf("registry URL scheme must be http or https, not %q", u.Scheme)
	}
	if u.Host == "" {
		return nil, name.Registry{}, errors.New("registry URL has no host")
	}
	if strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, name.Registry{}, errors.New("registry URL must be scheme://host[:port] with no path or query")
	}
	var opts []name.Option
	if u.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(u.Host, opts...)
	if err != nil {
		return nil, name.Registry{}, fmt.Errorf("registry URL host: %w", err)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, reg, nil
}

// Name is the registry name from Config.
func (r *Registry) Name() string { return r.name }

// Budget is what the origin last said about its pull rate limit.
func (r *Registry) Budget() Budget { return r.budget.get() }

// HeadManifest asks the origin for a manifest's descriptor without
// downloading it. Docker Hub does not count HEAD as a pull, which is why this
// never falls back to a GET. Digest is empty when the upstream did not send
// Docker-Content-Digest; Size is -1 when it sent no Content-Length.
func (r *Registry) HeadManifest(ctx context.Context, repo, ref string, accept []string) (ocispec.Descriptor, error) {
	eb := r.errBase("HEAD manifest", repo, ref)
	want, verr := checkManifestArgs(repo, ref)
	if verr != nil {
		return ocispec.Descriptor{}, withBase(verr, eb)
	}
	var desc ocispec.Descriptor
	err := r.origin.run(ctx, eb, func(*ticket) error {
		var err error
		desc, err = r.origin.headManifest(ctx, eb, want, accept)
		return err
	})
	return desc, err
}

// GetManifest downloads a manifest, at most MaxManifestSize bytes, and
// returns it byte for byte. If ref is a digest the body must hash to it, and
// a Docker-Content-Digest header must match the body; otherwise the call
// fails with Code DIGEST_INVALID and returns nothing.
//
// A tag is always fetched from the origin. A digest is fetched from the
// first mirror that carries repo and answers with the right bytes, then from
// the origin. Docker Hub counts each origin GET as a pull, so at most one is
// sent per call (plus the token refresh ggcr does after a 401, which is not
// counted).
func (r *Registry) GetManifest(ctx context.Context, repo, ref string, accept []string) (Manifest, error) {
	eb := r.errBase("GET manifest", repo, ref)
	want, verr := checkManifestArgs(repo, ref)
	if verr != nil {
		return Manifest{}, withBase(verr, eb)
	}
	var m Manifest
	var err error
	fetch := func(e *endpoint, eb Error, _ *ticket) error {
		var err error
		m, err = e.getManifest(ctx, eb, want, accept)
		return err
	}
	if want == "" {
		err = r.origin.run(ctx, eb, func(t *ticket) error { return fetch(r.origin, eb, t) })
	} else {
		err = r.fromSources(ctx, eb, fetch)
	}
	return m, err
}

// GetBlob opens a blob from the first mirror that carries repo and has it,
// else from the origin, following redirects to other hosts (CDNs) without
// the Authorization header. The caller closes Body and verifies the digest;
// a mirror's body is also checked as it is read, and a mismatch fails the
// last Read with DIGEST_INVALID and counts against that mirror.
func (r *Registry) GetBlob(ctx context.Context, repo string, d digest.Digest) (Blob, error) {
	return r.getBlob(ctx, repo, d, true)
}

// GetBlobUnverified is GetBlob for a caller that hashes the body itself, as
// the cache's store does, so a mirror's bytes are not hashed twice. The
// caller must pass its verdict to Blob.Judge.
func (r *Registry) GetBlobUnverified(ctx context.Context, repo string, d digest.Digest) (Blob, error) {
	return r.getBlob(ctx, repo, d, false)
}

func (r *Registry) getBlob(ctx context.Context, repo string, d digest.Digest, verify bool) (Blob, error) {
	eb := r.errBase("GET blob", repo, string(d))
	if err := checkBlobArgs(repo, d); err != nil {
		return Blob{}, withBase(err, eb)
	}
	var b Blob
	err := r.fromSources(ctx, eb, func(e *endpoint, eb Error, t *ticket) error {
		var err error
		b, err = e.getBlob(ctx, eb, d, t, verify)
		return err
	})
	return b, err
}

// HeadBlob returns a blob's descriptor without downloading it, asking
// mirrors first like GetBlob.
func (r *Registry) HeadBlob(ctx context.Context, repo string, d digest.Digest) (ocispec.Descriptor, error) {
	eb := r.errBase("HEAD blob", repo, string(d))
	if err := checkBlobArgs(repo, d); err != nil {
		return ocispec.Descriptor{}, withBase(err, eb)
	}
	var desc ocispec.Descriptor
	err := r.fromSources(ctx, eb, func(e *endpoint, eb Error, _ *ticket) error {
		var err error
		desc, err = e.headBlob(ctx, eb, d)
		return err
	})
	return desc, err
}

// Do passes a read-only request through to the origin: method (GET or HEAD)
// /v2/<repo>/<suffix>?<query>, for tags/list and referrers. It returns the
// raw response for 2xx, which the caller must close; other statuses become an
// *Error. Only content-negotiation and conditional headers are copied from
// header (Accept, Range, If-*): a client's own Authorization or cookies must
// never reach the upstream.
func (r *Registry) Do(ctx context.Context, method, repo, suffix string, query url.Values, header http.Header) (*http.Response, error) {
	eb := r.errBase(method+" "+firstSegment(suffix), repo, "")
	if method != http.MethodGet && method != http.MethodHead {
		return nil, withBase(&Error{Code: CodeUnsupported, Message: "only GET and HEAD are passed through"}, eb)
	}
	if !validRepo(repo) {
		return nil, withBase(errInvalidName, eb)
	}
	if !validSuffix(suffix) {
		return nil, withBase(&Error{Code: CodeUnsupported, Message: "invalid path suffix"}, eb)
	}
	var resp *http.Response
	err := r.origin.run(ctx, eb, func(*ticket) error {
		res, uerr := r.origin.send(ctx, eb, method, "/v2/"+repo+"/"+suffix, query, passHeaders(header))
		if uerr != nil {
			return uerr
		}
		if res.StatusCode/100 != 2 {
			return responseError(res, eb, CodeNameUnknown)
		}
		resp = res
		return nil
	})
	return resp, err
}

func (r *Registry) errBase(op, repo, ref string) Error {
	return Error{Registry: r.name, Op: op, Repository: repo, Reference: ref}
}

// endpoint is one place content can come from: the origin or a mirror.
type endpoint struct {
	registry string // for Error.Registry
	source   string // for Manifest.Source / Blob.Source
	base     url.URL
	scopes   *scopeCache
	log      *slog.Logger
	breaker  *breaker

	// Origin only: the budget whose Retry-After gates requests.
	budget *budgetTracker

	// Mirrors only.
	mirror   bool
	prefix   string      // prepended to the repository, e.g. "docker"
	patterns []string    // repositories carried (path.Match); empty = all
	bad      *badContent // digests this mirror served wrong bytes for
}

// send makes one request to the endpoint with the transport for repo's
// scope. Non-2xx responses are returned as they are; the caller decides what
// they mean.
func (e *endpoint) send(ctx context.Context, eb Error, method, path string, query url.Values, header http.Header) (*http.Response, *Error) {
	if e.budget != nil {
		if status, wait, ok := e.budget.gate(method, path); !ok {
			ge := eb
			ge.StatusCode = status
			ge.Code = statusCode(status, "")
			ge.Message = "origin asked for a pause (Retry-After); request not sent"
			ge.RetryAfter = wait
			ge.notSent = true
			return nil, &ge
		}
	}
	rt, err := e.scopes.transport(ctx, eb.Repository)
	if err != nil {
		return nil, wrapError(err, eb)
	}
	u := e.base
	u.Path = path
	if len(query) > 0 {
		u.RawQuery = query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, wrapError(err, eb)
	}
	if header != nil {
		req.Header = header
	}
	client := &http.Client{Transport: rt, CheckRedirect: checkRedirect}
	resp, err := client.Do(req)
	if err != nil {
		return nil, wrapError(err, eb)
	}
	return resp, nil
}

func (e *endpoint) headManifest(ctx context.Context, eb Error, want digest.Digest, accept []string) (ocispec.Descriptor, error) {
	resp, uerr := e.send(ctx, eb, http.MethodHead, "/v2/"+eb.Repository+"/manifests/"+eb.Reference, nil, acceptHeader(accept))
	if uerr != nil {
		return ocispec.Descriptor{}, uerr
	}
	if resp.StatusCode != http.StatusOK {
		return ocispec.Descriptor{}, responseError(resp, eb, CodeManifestUnknown)
	}
	resp.Body.Close()
	desc := ocispec.Descriptor{
		MediaType: mediaType(resp.Header.Get("Content-Type")),
		Size:      resp.ContentLength,
	}
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		got, err := digest.Parse(h)
		switch {
		case err != nil:
			// A HEAD cannot be checked against a body; a garbled header is
			// treated as absent so the caller GETs and verifies instead.
			e.log.WarnContext(ctx, "ignoring unparsable Docker-Content-Digest", "source", e.source, "repository", eb.Repository)
		case want != "" && got != want:
			return ocispec.Descriptor{}, digestError(eb, fmt.Sprintf("asked for %s, Docker-Content-Digest says %s", want, got))
		default:
			desc.Digest = got
		}
	}
	return desc, nil
}

func (e *endpoint) getManifest(ctx context.Context, eb Error, want digest.Digest, accept []string) (Manifest, error) {
	resp, uerr := e.send(ctx, eb, http.MethodGet, "/v2/"+eb.Repository+"/manifests/"+eb.Reference, nil, acceptHeader(accept))
	if uerr != nil {
		return Manifest{}, uerr
	}
	if resp.StatusCode != http.StatusOK {
		return Manifest{}, responseError(resp, eb, CodeManifestUnknown)
	}
	defer resp.Body.Close()
	if resp.ContentLength > MaxManifestSize {
		return Manifest{}, tooBig(eb)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxManifestSize+1))
	if err != nil {
		return Manifest{}, wrapError(err, eb)
	}
	if len(data) > MaxManifestSize {
		return Manifest{}, tooBig(eb)
	}

	// Verify before returning anything: a manifest that does not match its
	// digest must never reach the cache.
	var got digest.Digest
	if want != "" {
		if err := verify(want, data); err != nil {
			return Manifest{}, digestError(eb, err.Error())
		}
		got = want
	}
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		hd, err := digest.Parse(h)
		if err != nil {
			return Manifest{}, digestError(eb, "unparsable Docker-Content-Digest header")
		}
		if err := verify(hd, data); err != nil {
			return Manifest{}, digestError(eb, "Docker-Content-Digest: "+err.Error())
		}
		if got == "" {
			got = hd
		}
	}
	if got == "" {
		got = digest.FromBytes(data)
	}
	mt := mediaType(resp.Header.Get("Content-Type"))
	if mt == "" || mt == "application/octet-stream" || mt == "text/plain" {
		// Some registries serve manifests with a generic type; the
		// manifest names its own.
		var probe struct {
			MediaType string `json:"mediaType"`
		}
		if json.Unmarshal(data, &probe) == nil && probe.MediaType != "" {
			mt = probe.MediaType
		}
	}
	return Manifest{
		Descriptor: ocispec.Descriptor{MediaType: mt, Digest: got, Size: int64(len(data))},
		Data:       data,
		Source:     e.source,
	}, nil
}

func (e *endpoint) getBlob(ctx context.Context, eb Error, d digest.Digest, t *ticket, verify bool) (Blob, error) {
	resp, uerr := e.send(ctx, eb, http.MethodGet, "/v2/"+eb.Repository+"/blobs/"+string(d), nil, nil)
	if uerr != nil {
		return Blob{}, uerr
	}
	if resp.StatusCode != http.StatusOK {
		return Blob{}, responseError(resp, eb, CodeBlobUnknown)
	}
	b := Blob{Body: resp.Body, Size: resp.ContentLength, Source: e.source, Judge: func(error) {}}
	switch {
	case !e.mirror:
		// The origin is judged on its answer alone; its content is
		// verified by the caller.
	case verify:
		b.Body = newVerifyingReader(ctx, resp.Body, d, eb, t, e.bad)
	default:
		// The verdict comes from the caller; until then the breaker's
		// probe slot stays taken, and a body closed without one frees it.
		t.deferred = true
		b.Judge = func(err error) { judgeMirrorBlob(ctx, t, e.bad, d, err) }
		b.Body = &judgedBody{ReadCloser: resp.Body, t: t}
	}
	return b, nil
}

func (e *endpoint) headBlob(ctx context.Context, eb Error, d digest.Digest) (ocispec.Descriptor, error) {
	resp, uerr := e.send(ctx, eb, http.MethodHead, "/v2/"+eb.Repository+"/blobs/"+string(d), nil, nil)
	if uerr != nil {
		return ocispec.Descriptor{}, uerr
	}
	if resp.StatusCode != http.StatusOK {
		return ocispec.Descriptor{}, responseError(resp, eb, CodeBlobUnknown)
	}
	resp.Body.Close()
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		if got, err := digest.Parse(h); err == nil && got != d {
			return ocispec.Descriptor{}, digestError(eb, fmt.Sprintf("asked for %s, Docker-Content-Digest says %s", d, got))
		}
	}
	return ocispec.Descriptor{
		MediaType: mediaType(resp.Header.Get("Content-Type")),
		Digest:    d,
		Size:      resp.ContentLength,
	}, nil
}

func verify(d digest.Digest, data []byte) error {
	if !d.Algorithm().Available() {
		return fmt.Errorf("unsupported digest algorithm %q", d.Algorithm())
	}
	if got := d.Algorithm().FromBytes(data); got != d {
		return fmt.Errorf("content hashes to %s, not %s", got, d)
	}
	return nil
}

func digestError(eb Error, msg string) *Error {
	e := eb
	e.Code = CodeDigestInvalid
	e.Message = msg
	return &e
}

func tooBig(eb Error) *Error {
	e := eb
	e.Code = CodeManifestInvalid
	e.Message = fmt.Sprintf("manifest larger than %d bytes", MaxManifestSize)
	return &e
}

// withBase fills an argument error with the call's registry, op and names.
func withBase(err *Error, eb Error) *Error {
	e := eb
	e.Code, e.Message = err.Code, err.Message
	return &e
}

// mediaType strips parameters ("; charset=utf-8"): descriptors carry the
// bare type.
func mediaType(ct string) string {
	if ct == "" {
		return ""
	}
	if mt, _, err := mime.ParseMediaType(ct); err == nil {
		return mt
	}
	return strings.TrimSpace(ct)
}

func acceptHeader(accept []string) http.Header {
	if len(accept) == 0 {
		accept = defaultManifestAccept
	}
	h := make(http.Header)
	h.Set("Accept", strings.Join(accept, ", "))
	return h
}

// passHeaders copies the request headers that make sense to forward to an
// upstream; everything else (Authorization, Cookie, hop-by-hop) stays home.
func passHeaders(in http.Header) http.Header {
	out := make(http.Header)
	for _, k := range []string{"Accept", "Range", "If-Range", "If-None-Match", "If-Match", "If-Modified-Since", "If-Unmodified-Since"} {
		if v := in.Values(k); len(v) > 0 {
			out[k] = append([]string(nil), v...)
		}
	}
	return out
}

// Grammar from the OCI distribution spec.
var (
	repoRE   = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE    = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	suffixRE = regexp.MustCompile(`^[A-Za-z0-9._:/+-]+$`)
)

var (
	errInvalidName = &Error{Code: CodeNameInvalid, Message: "invalid repository name"}
	errInvalidTag  = &Error{Code: CodeTagInvalid, Message: "invalid tag or digest"}
)

func validRepo(repo string) bool { return len(repo) <= 255 && repoRE.MatchString(repo) }

func validSuffix(s string) bool {
	return suffixRE.MatchString(s) && !strings.HasPrefix(s, "/") && !strings.Contains(s, "..") && !strings.Contains(s, "//")
}

func firstSegment(s string) string {
	seg, _, _ := strings.Cut(s, "/")
	return seg
}

// checkManifestArgs validates repo and ref; for a digest ref it returns the digest.
func checkManifestArgs(repo, ref string) (digest.Digest, *Error) {
	if !validRepo(repo) {
		return "", errInvalidName
	}
	if strings.Contains(ref, ":") {
		d, err := digest.Parse(ref)
		if err != nil {
			return "", &Error{Code: CodeDigestInvalid, Message: "invalid digest"}
		}
		return d, nil
	}
	if !tagRE.MatchString(ref) {
		return "", errInvalidTag
	}
	return "", nil
}

func checkBlobArgs(repo string, d digest.Digest) *Error {
	if !validRepo(repo) {
		return errInvalidName
	}
	if d.Validate() != nil {
		return &Error{Code: CodeDigestInvalid, Message: "invalid digest"}
	}
	return nil
}

package upstream

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
)

// endpoint is one place content can come from: the origin or a mirror.
type endpoint struct {
	source  string // for Manifest.Source / Blob.Source: SourceOrigin or the mirror's name
	name    string // for errors: the registry's name, or the mirror's
	base    url.URL
	scopes  *scopeCache
	red     redactor
	log     *slog.Logger
	breaker *breaker
	// maxPause caps the breaker's backoff a Retry-After can ask for.
	maxPause time.Duration

	// Origin only: the budget whose Retry-After gates requests.
	budget *budgetTracker

	// Mirrors only.
	mirror   bool
	prefix   string      // prepended to the repository, e.g. "docker"
	patterns []string    // repositories carried (path.Match); empty = all
	bad      *badContent // digests this mirror served wrong bytes for
}

// call names an operation on repo at this endpoint, with the repository as
// the endpoint names it.
func (e *endpoint) call(op string, repo ref.Repo, reference string) call {
	return call{registry: e.name, op: op, repo: e.repoPath(repo.Path()), ref: reference}
}

// repoPath is repo as this endpoint names it.
func (e *endpoint) repoPath(repo string) string {
	if e.prefix == "" {
		return repo
	}
	return e.prefix + "/" + repo
}

// send makes one request to the endpoint with the transport for c's
// repository scope. Non-2xx responses are returned as they are; the caller
// decides what they mean.
func (e *endpoint) send(ctx context.Context, c call, method, path string, query url.Values, header http.Header) (*http.Response, error) {
	if e.budget != nil {
		if kind, wait, ok := e.budget.gate(method, path); !ok {
			return nil, c.notSent(kind, "the origin asked for a pause (Retry-After); request not sent", wait)
		}
	}
	rt, err := e.scopes.transport(ctx, c.repo)
	if err != nil {
		return nil, c.transportError(ctx, err, e.red)
	}
	u := e.base
	u.Path = path
	if len(query) > 0 {
		u.RawQuery = query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, c.transportError(ctx, err, e.red)
	}
	if header != nil {
		req.Header = header
	}
	client := &http.Client{Transport: rt, CheckRedirect: checkRedirect}
	resp, err := client.Do(req)
	if err != nil {
		return nil, c.transportError(ctx, err, e.red)
	}
	return resp, nil
}

func (e *endpoint) headManifest(ctx context.Context, c call, want digest.Digest, accept []string) (ocispec.Descriptor, error) {
	resp, err := e.send(ctx, c, http.MethodHead, "/v2/"+c.repo+"/manifests/"+c.ref, nil, acceptHeader(accept))
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return ocispec.Descriptor{}, c.responseError(resp, e.red)
	}
	resp.Body.Close()
	desc := ocispec.Descriptor{Size: resp.ContentLength}
	if mt := bareType(resp.Header.Get("Content-Type")); manifestTypes[mt] {
		desc.MediaType = mt
	}
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		got, err := digest.Parse(h)
		switch {
		case err != nil:
			// A HEAD cannot be checked against a body; a garbled header is
			// treated as absent so the caller GETs and verifies instead.
			e.log.WarnContext(ctx, "ignoring unparsable Docker-Content-Digest", "source", e.source, "repository", c.repo)
		case want != "" && got != want:
			return ocispec.Descriptor{}, c.err(regerr.BadContent, fmt.Sprintf("asked for %s, Docker-Content-Digest says %s", want, got))
		default:
			desc.Digest = got
		}
	}
	return desc, nil
}

// getManifest GETs a manifest (by digest when want is set) and verifies it
// before returning anything: a manifest that does not match its digest, or
// that is not a manifest, must never reach the cache.
func (e *endpoint) getManifest(ctx context.Context, c call, want digest.Digest, accept []string) (Manifest, error) {
	resp, err := e.send(ctx, c, http.MethodGet, "/v2/"+c.repo+"/manifests/"+c.ref, nil, acceptHeader(accept))
	if err != nil {
		return Manifest{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return Manifest{}, c.responseError(resp, e.red)
	}
	data, err := readLimited(ctx, c, resp, MaxManifestSize, e.red)
	if err != nil {
		return Manifest{}, err
	}
	got := want
	if want != "" {
		if err := verifyBytes(want, data); err != nil {
			return Manifest{}, c.err(regerr.BadContent, err.Error())
		}
	}
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		hd, err := digest.Parse(h)
		if err != nil {
			return Manifest{}, c.err(regerr.BadContent, "unparsable Docker-Content-Digest header")
		}
		if err := verifyBytes(hd, data); err != nil {
			return Manifest{}, c.err(regerr.BadContent, "Docker-Content-Digest: "+err.Error())
		}
		if got == "" {
			got = hd
		}
	}
	if got == "" {
		got = digest.FromBytes(data)
	}
	mt, ok := ManifestMediaType(resp.Header.Get("Content-Type"), data)
	if !ok {
		return Manifest{}, c.err(regerr.BadContent, "the answer is not a manifest (Content-Type "+fmt.Sprintf("%q", shorten(resp.Header.Get("Content-Type"), 64))+")")
	}
	return Manifest{
		Descriptor: ocispec.Descriptor{MediaType: mt, Digest: got, Size: int64(len(data))},
		Data:       data,
		Source:     e.source,
	}, nil
}

// getList GETs a tags list or referrers answer, whole.
func (e *endpoint) getList(ctx context.Context, c call, suffix string, query url.Values, h http.Header, kind ListKind) (List, error) {
	resp, err := e.send(ctx, c, http.MethodGet, "/v2/"+c.repo+"/"+suffix, query, h)
	if err != nil {
		return List{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return List{}, c.responseError(resp, e.red)
	}
	data, err := readLimited(ctx, c, resp, MaxListSize, e.red)
	if err != nil {
		return List{}, err
	}
	ct := "application/json"
	if kind == Referrers {
		ct = ocispec.MediaTypeImageIndex
	}
	return List{Body: data, ContentType: ct, Link: resp.Header.Get("Link")}, nil
}

// readLimited reads a whole body of at most limit bytes and closes it.
func readLimited(ctx context.Context, c call, resp *http.Response, limit int64, red redactor) ([]byte, error) {
	defer resp.Body.Close()
	if resp.ContentLength > limit {
		return nil, c.err(regerr.TooLarge, fmt.Sprintf("answer of %d bytes is over the %d-byte limit", resp.ContentLength, limit))
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, c.transportError(ctx, err, red)
	}
	if int64(len(data)) > limit {
		return nil, c.err(regerr.TooLarge, fmt.Sprintf("answer is over the %d-byte limit", limit))
	}
	return data, nil
}

func (e *endpoint) headBlob(ctx context.Context, c call, d digest.Digest) (ocispec.Descriptor, error) {
	resp, err := e.send(ctx, c, http.MethodHead, "/v2/"+c.repo+"/blobs/"+d.String(), nil, nil)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return ocispec.Descriptor{}, c.responseError(resp, e.red)
	}
	resp.Body.Close()
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		if got, err := digest.Parse(h); err == nil && got != d {
			return ocispec.Descriptor{}, c.err(regerr.BadContent, fmt.Sprintf("asked for %s, Docker-Content-Digest says %s", d, got))
		}
	}
	return ocispec.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: resp.ContentLength}, nil
}

func verifyBytes(d digest.Digest, data []byte) error {
	if !d.Algorithm().Available() {
		return fmt.Errorf("unsupported digest algorithm %q", d.Algorithm())
	}
	if got := d.Algorithm().FromBytes(data); got != d {
		return fmt.Errorf("content hashes to %s, not %s", got, d)
	}
	return nil
}

func acceptHeader(accept []string) http.Header {
	if len(accept) == 0 {
		accept = defaultManifestAccept
	}
	h := make(http.Header)
	h.Set("Accept", strings.Join(accept, ", "))
	return h
}

// Package pullclient is the benchmarks' CI job: it pulls an image the way
// docker or containerd does (manifest by tag with every manifest type
// accepted, the linux/amd64 child of an index by digest, then config and
// layers), verifies every digest, answers a Bearer challenge with an
// anonymous token, and never retries: a pull that fails is a failed job.
package pullclient

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
)

var acceptAll = strings.Join([]string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}, ", ")

// Puller pulls images from one registry (base, scheme://host). Safe for
// concurrent use.
type Puller struct {
	base string
	hc   *http.Client
	// ManifestReqs and BlobReqs count GETs sent to base (401s included).
	ManifestReqs, BlobReqs atomic.Int64
}

// New returns a Puller for base whose requests each give up after timeout
// (a CI job's patience).
func New(base string, timeout time.Duration) *Puller {
	return &Puller{base: base, hc: &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:               nil,
			DisableCompression:  true,
			MaxIdleConnsPerHost: 32,
		},
	}}
}

// Close closes idle connections.
func (p *Puller) Close() { p.hc.CloseIdleConnections() }

// Error is a failed pull; Class groups failures in a report ("manifest 503
// UNAVAILABLE", "transport", "digest mismatch", ...).
type Error struct {
	Class string
	Msg   string
}

func (e *Error) Error() string { return e.Msg }

// session is one `docker pull`: it holds the token it got, if any.
type session struct {
	p     *Puller
	ctx   context.Context
	token string
}

// Pulled is what one successful (or partial) pull received.
type Pulled struct {
	// Digest is what the tag resolved to (the index digest for an index).
	Digest digest.Digest
	// Child is the linux/amd64 manifest digest when the tag is an index.
	Child digest.Digest
	Bytes int64
}

// Pull pulls repo:tag for linux/amd64.
func (p *Puller) Pull(ctx context.Context, repo, tag string) (res Pulled, err error) {
	s := &session{p: p, ctx: ctx}
	n := &res.Bytes
	body, d, err := s.manifest(repo, tag, "")
	if err != nil {
		return res, err
	}
	res.Digest = d
	*n += int64(len(body))
	var m struct {
		MediaType string `json:"mediaType"`
		Manifests []struct {
			Digest   digest.Digest `json:"digest"`
			Platform struct {
				OS           string `json:"os"`
				Architecture string `json:"architecture"`
			} `json:"platform"`
		} `json:"manifests"`
		Config struct{ Digest digest.Digest }   `json:"config"`
		Layers []struct{ Digest digest.Digest } `json:"layers"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		return res, &Error{"bad manifest", fmt.Sprintf("%s:%s: manifest: %v", repo, tag, err)}
	}
	if len(m.Manifests) > 0 {
		var child digest.Digest
		for _, c := range m.Manifests {
			if c.Platform.OS == "linux" && c.Platform.Architecture == "amd64" {
				child = c.Digest
			}
		}
		if child == "" {
			return res, &Error{"bad manifest", fmt.Sprintf("%s:%s: no linux/amd64 in index", repo, tag)}
		}
		res.Child = child
		cb, _, err := s.manifest(repo, child.String(), child)
		if err != nil {
			return res, err
		}
		*n += int64(len(cb))
		m.Config.Digest, m.Layers = "", nil
		if err := json.Unmarshal(cb, &m); err != nil {
			return res, &Error{"bad manifest", fmt.Sprintf("%s@%s: %v", repo, child, err)}
		}
	}
	blobs := []digest.Digest{m.Config.Digest}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest)
	}
	for _, b := range blobs {
		bn, err := s.blob(repo, b)
		*n += bn
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// manifest GETs a manifest and verifies it: against want when pulling by
// digest, against Docker-Content-Digest when the server sends one.
func (s *session) manifest(repo, ref string, want digest.Digest) ([]byte, digest.Digest, error) {
	resp, err := s.get("/v2/"+repo+"/manifests/"+ref, acceptAll, repo)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, "", &Error{"transport", fmt.Sprintf("GET manifest %s:%s: body: %v", repo, ref, err)}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", statusError("manifest", repo, ref, resp.StatusCode, body)
	}
	got := digest.FromBytes(body)
	if want != "" && got != want {
		return nil, "", &Error{"digest mismatch", fmt.Sprintf("manifest %s@%s: content hashes to %s", repo, want, got)}
	}
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" && h != got.String() {
		return nil, "", &Error{"digest mismatch", fmt.Sprintf("manifest %s:%s: Docker-Content-Digest %s, content hashes to %s", repo, ref, h, got)}
	}
	return body, got, nil
}

func (s *session) blob(repo string, d digest.Digest) (int64, error) {
	resp, err := s.get("/v2/"+repo+"/blobs/"+d.String(), "", repo)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, statusError("blob", repo, d.String(), resp.StatusCode, body)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return n, &Error{"transport", fmt.Sprintf("GET blob %s@%s: body after %d bytes: %v", repo, d, n, err)}
	}
	if got := digest.NewDigest(digest.SHA256, h); got != d {
		return n, &Error{"digest mismatch", fmt.Sprintf("blob %s@%s: content hashes to %s", repo, d, got)}
	}
	return n, nil
}

func statusError(kind, repo, ref string, status int, body []byte) error {
	var e struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	code := ""
	if json.Unmarshal(body, &e) == nil && len(e.Errors) > 0 {
		code = " " + e.Errors[0].Code
	}
	return &Error{
		Class: fmt.Sprintf("%s %d%s", kind, status, code),
		Msg:   fmt.Sprintf("GET %s %s %s: %d %s", kind, repo, ref, status, strings.TrimSpace(string(body))),
	}
}

// get sends a GET, answering one Bearer challenge with an anonymous token.
func (s *session) get(path, accept, repo string) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		req, err := http.NewRequestWithContext(s.ctx, http.MethodGet, s.p.base+path, nil)
		if err != nil {
			return nil, err
		}
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		if s.token != "" {
			req.Header.Set("Authorization", "Bearer "+s.token)
		}
		if strings.Contains(path, "/manifests/") {
			s.p.ManifestReqs.Add(1)
		} else {
			s.p.BlobReqs.Add(1)
		}
		resp, err := s.p.hc.Do(req)
		if err != nil {
			return nil, &Error{"transport", fmt.Sprintf("GET %s: %v", path, err)}
		}
		if resp.StatusCode != http.StatusUnauthorized || attempt > 0 {
			return resp, nil
		}
		ch := resp.Header.Get("WWW-Authenticate")
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err := s.authenticate(ch); err != nil {
			return nil, err
		}
	}
}

func (s *session) authenticate(challenge string) error {
	scheme, params, _ := strings.Cut(challenge, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return &Error{"auth", "unsupported challenge " + challenge}
	}
	p := parseParams(params)
	q := url.Values{}
	if p["service"] != "" {
		q.Set("service", p["service"])
	}
	if p["scope"] != "" {
		q.Set("scope", p["scope"])
	}
	req, err := http.NewRequestWithContext(s.ctx, http.MethodGet, p["realm"]+"?"+q.Encode(), nil)
	if err != nil {
		return &Error{"auth", err.Error()}
	}
	resp, err := s.p.hc.Do(req)
	if err != nil {
		return &Error{"auth", fmt.Sprintf("token: %v", err)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return &Error{fmt.Sprintf("token %d", resp.StatusCode), fmt.Sprintf("token: %d %s", resp.StatusCode, body)}
	}
	var tok struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &tok); err != nil {
		return &Error{"auth", fmt.Sprintf("token: %v", err)}
	}
	s.token = tok.Token
	if s.token == "" {
		s.token = tok.AccessToken
	}
	return nil
}

// parseParams parses `k="v",k2="v2"` auth-params.
func parseParams(s string) map[string]string {
	out := map[string]string{}
	for s != "" {
		s = strings.TrimLeft(s, " ,")
		k, rest, ok := strings.Cut(s, "=")
		if !ok {
			break
		}
		var v string
		if strings.HasPrefix(rest, `"`) {
			end := strings.Index(rest[1:], `"`)
			if end < 0 {
				v, s = rest[1:], ""
			} else {
				v, s = rest[1:1+end], rest[2+end:]
			}
		} else {
			v, s, _ = strings.Cut(rest, ",")
		}
		out[strings.ToLower(strings.TrimSpace(k))] = v
	}
	return out
}

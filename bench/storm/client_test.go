package storm

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

// puller pulls images the way a CI job's docker/containerd does: manifest by
// tag, the linux/amd64 child by digest for an index, then config and layers
// by digest, verifying every digest. It does anonymous token auth when
// challenged. It never retries: a CI job whose pull fails is a failed job.
type puller struct {
	base string
	hc   *http.Client
	// manifestReqs and blobReqs count GETs sent to base (401s included).
	manifestReqs, blobReqs atomic.Int64
}

func newPuller(base string) *puller {
	return &puller{base: base, hc: &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			DisableCompression:  true,
			MaxIdleConnsPerHost: 32,
		},
	}}
}

func (p *puller) close() { p.hc.CloseIdleConnections() }

// pullError is a failed client pull; class groups failures in the report.
type pullError struct {
	class string
	msg   string
}

func (e *pullError) Error() string { return e.msg }

// session is one `docker pull`: it holds the token it got, if any.
type session struct {
	p     *puller
	ctx   context.Context
	token string
}

// pulled is what one successful (or partial) pull received.
type pulled struct {
	// digest is what the tag resolved to (the index digest for an index).
	digest digest.Digest
	// child is the linux/amd64 manifest digest when the tag is an index.
	child digest.Digest
	bytes int64
}

// pull pulls repo:tag for linux/amd64.
func (p *puller) pull(ctx context.Context, repo, tag string) (res pulled, err error) {
	s := &session{p: p, ctx: ctx}
	n := &res.bytes
	body, d, err := s.manifest(repo, tag, "")
	if err != nil {
		return res, err
	}
	res.digest = d
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
		return res, &pullError{"bad manifest", fmt.Sprintf("%s:%s: manifest: %v", repo, tag, err)}
	}
	if len(m.Manifests) > 0 {
		var child digest.Digest
		for _, c := range m.Manifests {
			if c.Platform.OS == "linux" && c.Platform.Architecture == "amd64" {
				child = c.Digest
			}
		}
		if child == "" {
			return res, &pullError{"bad manifest", fmt.Sprintf("%s:%s: no linux/amd64 in index", repo, tag)}
		}
		res.child = child
		cb, _, err := s.manifest(repo, child.String(), child)
		if err != nil {
			return res, err
		}
		*n += int64(len(cb))
		m.Config.Digest, m.Layers = "", nil
		if err := json.Unmarshal(cb, &m); err != nil {
			return res, &pullError{"bad manifest", fmt.Sprintf("%s@%s: %v", repo, child, err)}
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
		return nil, "", &pullError{"transport", fmt.Sprintf("GET manifest %s:%s: body: %v", repo, ref, err)}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, "", statusError("manifest", repo, ref, resp.StatusCode, body)
	}
	got := digest.FromBytes(body)
	if want != "" && got != want {
		return nil, "", &pullError{"digest mismatch", fmt.Sprintf("manifest %s@%s: content hashes to %s", repo, want, got)}
	}
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" && h != got.String() {
		return nil, "", &pullError{"digest mismatch", fmt.Sprintf("manifest %s:%s: Docker-Content-Digest %s, content hashes to %s", repo, ref, h, got)}
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
		return n, &pullError{"transport", fmt.Sprintf("GET blob %s@%s: body after %d bytes: %v", repo, d, n, err)}
	}
	if got := digest.NewDigest(digest.SHA256, h); got != d {
		return n, &pullError{"digest mismatch", fmt.Sprintf("blob %s@%s: content hashes to %s", repo, d, got)}
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
	return &pullError{
		class: fmt.Sprintf("%s %d%s", kind, status, code),
		msg:   fmt.Sprintf("GET %s %s %s: %d %s", kind, repo, ref, status, strings.TrimSpace(string(body))),
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
			s.p.manifestReqs.Add(1)
		} else {
			s.p.blobReqs.Add(1)
		}
		resp, err := s.p.hc.Do(req)
		if err != nil {
			return nil, &pullError{"transport", fmt.Sprintf("GET %s: %v", path, err)}
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
		return &pullError{"auth", "unsupported challenge " + challenge}
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
		return &pullError{"auth", err.Error()}
	}
	resp, err := s.p.hc.Do(req)
	if err != nil {
		return &pullError{"auth", fmt.Sprintf("token: %v", err)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return &pullError{fmt.Sprintf("token %d", resp.StatusCode), fmt.Sprintf("token: %d %s", resp.StatusCode, body)}
	}
	var tok struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &tok); err != nil {
		return &pullError{"auth", fmt.Sprintf("token: %v", err)}
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

package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/testhub"
)

// Every way of asking for a blob or a manifest works over HTTP/1.1 and
// HTTP/2, with either blob copy mode, for content in flight and cached.
// (A wrapper that asserted io.ReaderFrom without checking once reset
// HTTP/2 streams for Range requests and for sendfile.)
func TestEveryRequestOverHTTP1AndHTTP2(t *testing.T) {
	for _, copyMode := range []string{"buffered", "sendfile"} {
		t.Run(copyMode, func(t *testing.T) {
			s := newStack(t, stackOptions{extra: "blob_copy: " + copyMode + "\n"})
			srv := httptest.NewUnstartedServer(s.app.Handler)
			srv.EnableHTTP2 = true
			srv.StartTLS()
			defer srv.Close()
			h2 := srv.Client()
			h1 := &http.Client{Transport: &http.Transport{
				TLSClientConfig: srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone(),
				TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
			}}
			for _, proto := range []struct {
				name   string
				client *http.Client
				major  int
			}{{"HTTP/1.1", h1, 1}, {"HTTP/2", h2, 2}} {
				t.Run(proto.name, func(t *testing.T) {
					repo := "library/proto" + fmt.Sprint(proto.major)
					img := s.backend.PushImage(t, repo, "1", testhub.ImageOptions{LayerSize: 3 << 20, Uncompressed: true})
					layer := img.Layers[0]
					want := backendGet(t, s.backend.URL+"/v2/"+repo+"/blobs/"+layer.String())
					mf := backendGet(t, s.backend.URL+"/v2/"+repo+"/manifests/"+img.Digest.String())
					c := &checker{t: t, base: srv.URL, client: proto.client, major: proto.major}

					blob := "/v2/" + repo + "/blobs/" + layer.String()
					// In flight: the first requests join the download.
					c.check("cold Range GET", "GET", blob, map[string]string{"Range": "bytes=100-199"}, 206, want[100:200])
					c.check("cold GET", "GET", blob, nil, 200, want)
					if err := s.app.Cache.Drain(context.Background()); err != nil {
						t.Fatal(err)
					}
					c.check("cached GET", "GET", blob, nil, 200, want)
					c.check("cached Range GET", "GET", blob, map[string]string{"Range": "bytes=1000-"}, 206, want[1000:])
					c.check("cached conditional GET", "GET", blob, map[string]string{"If-None-Match": `"` + layer.String() + `"`}, 304, nil)
					c.check("cached HEAD", "HEAD", blob, nil, 200, nil)

					man := "/v2/" + repo + "/manifests/"
					acc := map[string]string{"Accept": acceptAll}
					c.check("manifest GET", "GET", man+"1", acc, 200, mf)
					c.check("manifest by digest", "GET", man+img.Digest.String(), nil, 200, mf)
					c.check("manifest HEAD", "HEAD", man+"1", acc, 200, nil)
					c.check("manifest conditional GET", "GET", man+"1", map[string]string{"Accept": acceptAll, "If-None-Match": `"` + img.Digest.String() + `"`}, 304, nil)
					c.check("manifest Range GET", "GET", man+img.Digest.String(), map[string]string{"Range": "bytes=0-9"}, 206, mf[:10])
				})
			}
		})
	}
}

func backendGet(t *testing.T, url string) []byte {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Accept", acceptAll)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return b
}

type checker struct {
	t      *testing.T
	base   string
	client *http.Client
	major  int
}

func (c *checker) check(name, method, path string, hdr map[string]string, status int, body []byte) {
	c.t.Helper()
	req, _ := http.NewRequest(method, c.base+path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		c.t.Errorf("%s: %v", name, err)
		return
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Errorf("%s: reading the body: %v (the stream was reset)", name, err)
		return
	}
	if resp.ProtoMajor != c.major {
		c.t.Errorf("%s: served over HTTP/%d, want %d", name, resp.ProtoMajor, c.major)
	}
	if resp.StatusCode != status {
		c.t.Errorf("%s: status %d, want %d", name, resp.StatusCode, status)
	}
	if body != nil && !bytes.Equal(got, body) {
		c.t.Errorf("%s: %d bytes (digest %s), want %d", name, len(got), digest.FromBytes(got), len(body))
	}
	if method == "HEAD" && resp.ContentLength <= 0 {
		c.t.Errorf("%s: no Content-Length", name)
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		c.t.Errorf("%s: no X-Content-Type-Options: nosniff", name)
	}
}

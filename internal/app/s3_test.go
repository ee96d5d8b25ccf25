package app

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/testhub"
)

// With storage.s3 the pull path runs on a real S3 server: a cold pull
// streams to the client and lands in the bucket under the documented
// layout, and cached pulls (Range included) cost the upstream nothing.
func TestPullThroughS3(t *testing.T) {
	srv := testhub.StartS3(t)
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	s := newStack(t, stackOptions{tagTTL: "1h", storage: fmt.Sprintf(
		"{root: {{root}}, s3: {bucket: %s, endpoint: %s, path_style: true, prefix: rc}}", srv.Bucket, srv.Endpoint)})
	if _, ok := s.app.Store.(*store.S3); !ok {
		t.Fatalf("storage.s3 opened a %T", s.app.Store)
	}
	// Larger than one part, so the layer goes up as a multipart upload.
	img := s.backend.PushImage(t, "library/ons3", "1", testhub.ImageOptions{LayerSize: 12 << 20, Uncompressed: true})
	if _, err := s.pull("library/ons3", "1"); err != nil {
		t.Fatal(err)
	}
	if err := s.app.Cache.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	layer := img.Layers[0]
	key := "rc/blobs/sha256/" + layer.Encoded()[:2] + "/" + layer.Encoded()
	head, err := srv.Client.HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: &key})
	if err != nil || *head.ContentLength != img.Size {
		t.Fatalf("layer in the bucket: %v", err)
	}
	upResp, err := http.Get(s.backend.URL + "/v2/library/ons3/blobs/" + layer.String())
	if err != nil {
		t.Fatal(err)
	}
	full, _ := io.ReadAll(upResp.Body)
	upResp.Body.Close()

	s.hub.ResetCounts()
	s.hub.SetFault(testhub.Fault500)
	if _, err := s.pull("library/ons3", "1"); err != nil {
		t.Fatal(err)
	}
	resp, body := s.do("GET", "/v2/library/ons3/blobs/"+layer.String(), map[string]string{"Range": "bytes=9000000-9000099"})
	if resp.StatusCode != 206 || string(body) != string(full[9000000:9000100]) {
		t.Fatalf("Range on the cached layer: %d, %d bytes", resp.StatusCode, len(body))
	}
	if c := s.hub.Counts(); c.Requests != 0 {
		t.Fatalf("cached pulls made %d upstream requests", c.Requests)
	}
	if strings.Contains(s.logs.String(), srv.SecretKey) {
		t.Fatal("the S3 secret key appears in regcache's logs")
	}
}

// s3Stack is a stack whose store is a bucket on srv, with
// storage.s3.redirect as given.
func s3Stack(t *testing.T, srv *testhub.S3Server, redirect bool) *stack {
	t.Helper()
	for _, kv := range srv.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	return newStack(t, stackOptions{tagTTL: "1h", storage: fmt.Sprintf(
		"{root: {{root}}, s3: {bucket: %s, endpoint: %s, path_style: true, prefix: rc, redirect: %t, redirect_expiry: 2m}}",
		srv.Bucket, srv.Endpoint, redirect)})
}

// noRedirects sees a redirect instead of following it.
var noRedirects = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// With storage.s3.redirect, a committed blob that belongs to the
// repository is answered with a 307 to a presigned URL on the object store
// (GET, HEAD and Range alike), and its bytes never pass through regcache;
// a blob still downloading streams as before, and the repository check
// still applies. The signed URL is in no log line.
func TestBlobRedirectToS3(t *testing.T) {
	srv := testhub.StartS3(t)
	s := s3Stack(t, srv, true)
	img := s.backend.PushImage(t, "library/redir", "1", testhub.ImageOptions{LayerSize: 3 << 20, Uncompressed: true})
	s.backend.PushImage(t, "library/other", "1", testhub.ImageOptions{})
	layer := img.Layers[0]
	path := "/v2/library/redir/blobs/" + layer.String()
	get := func(t *testing.T, c *http.Client, method, u string, hdr map[string]string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, u, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, req.URL.Path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}

	// Cold: nothing is committed yet, so the download streams.
	resp, full := get(t, noRedirects, "GET", s.srv.URL+path, nil)
	if resp.StatusCode != 200 || digest.FromBytes(full) != layer {
		t.Fatalf("cold blob: %d, %d bytes", resp.StatusCode, len(full))
	}
	if err := s.app.Cache.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, served0 := s.counted(t, "blob")

	tests := []struct {
		name, method string
		hdr          map[string]string
		status       int
		want         []byte
	}{
		{"GET", "GET", nil, 200, full},
		{"HEAD", "HEAD", nil, 200, nil},
		{"Range", "GET", map[string]string{"Range": "bytes=1000000-1000099"}, 206, full[1000000:1000100]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := get(t, noRedirects, tc.method, s.srv.URL+path, tc.hdr)
			loc := resp.Header.Get("Location")
			if resp.StatusCode != http.StatusTemporaryRedirect || len(body) != 0 {
				t.Fatalf("%d with %d body bytes, want a bare 307", resp.StatusCode, len(body))
			}
			if !strings.HasPrefix(loc, srv.Endpoint+"/") || !strings.Contains(loc, "X-Amz-Signature=") {
				t.Fatalf("Location is not a presigned URL on %s", srv.Endpoint)
			}
			if resp.Header.Get("X-Regcache") != "hit" {
				t.Errorf("X-Regcache %q", resp.Header.Get("X-Regcache"))
			}
			// What a client does next: the same request at the new place.
			resp, body = get(t, http.DefaultClient, tc.method, loc, tc.hdr)
			if resp.StatusCode != tc.status || !bytes.Equal(body, tc.want) {
				t.Fatalf("at the object store: %d, %d bytes", resp.StatusCode, len(body))
			}
			if tc.method == "HEAD" && resp.ContentLength != int64(len(full)) {
				t.Fatalf("HEAD at the object store: Content-Length %d", resp.ContentLength)
			}
		})
	}
	if _, served := s.counted(t, "blob"); served != served0 {
		t.Errorf("regcache served %v blob bytes for redirected requests", served-served0)
	}
	if n := testutil.ToFloat64(s.app.Metrics.BlobRedirects.WithLabelValues("docker.io", "GET")); n != 2 {
		t.Errorf("regcache_blob_redirects_total{method=GET} = %v, want 2", n)
	}
	if n := testutil.ToFloat64(s.app.Metrics.BlobRedirects.WithLabelValues("docker.io", "HEAD")); n != 1 {
		t.Errorf("regcache_blob_redirects_total{method=HEAD} = %v, want 1", n)
	}

	// A client that follows redirects pulls the image, every digest
	// checked.
	if _, err := s.pull("library/redir", "1"); err != nil {
		t.Fatal(err)
	}
	// Stored, but not in library/other upstream: no URL for it.
	resp, body := get(t, noRedirects, "GET", s.srv.URL+"/v2/library/other/blobs/"+layer.String(), nil)
	if resp.StatusCode != 404 || resp.Header.Get("Location") != "" {
		t.Fatalf("blob of another repository: %d %s", resp.StatusCode, body)
	}
	for _, leak := range []string{"X-Amz-Signature", "X-Amz-Credential", srv.AccessKey, srv.SecretKey} {
		if strings.Contains(s.logs.String(), leak) {
			t.Errorf("regcache's logs hold %q: a presigned URL or a credential was logged", leak)
		}
	}
}

// With the object store down, cached blobs cannot be read: regcache
// answers 503 with OCI error JSON, well within the client's deadline (the
// deadline is a bound, not a timing assertion), while tags and manifests it
// holds in memory are still served. When the store is back on the same
// address with the same data, the same requests succeed without a restart.
func TestObjectStoreDown(t *testing.T) {
	for _, redirect := range []bool{false, true} {
		t.Run(fmt.Sprintf("redirect=%t", redirect), func(t *testing.T) {
			srv := testhub.StartS3(t)
			s := s3Stack(t, srv, redirect)
			img := s.backend.PushImage(t, "library/down", "1", testhub.ImageOptions{LayerSize: 1 << 20, Uncompressed: true})
			if _, err := s.pull("library/down", "1"); err != nil {
				t.Fatal(err)
			}
			if err := s.app.Cache.Drain(context.Background()); err != nil {
				t.Fatal(err)
			}
			blob := "/v2/library/down/blobs/" + img.Layers[0].String()
			do := func(method, path string, hdr map[string]string) (*http.Response, []byte, error) {
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, method, s.srv.URL+path, nil)
				for k, v := range hdr {
					req.Header.Set(k, v)
				}
				resp, err := noRedirects.Do(req)
				if err != nil {
					return nil, nil, err
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				return resp, b, err
			}

			srv.Stop()
			for _, method := range []string{"GET", "HEAD"} {
				start := time.Now()
				resp, body, err := do(method, blob, nil)
				if err != nil {
					t.Fatalf("%s blob with the object store down: %v (after %s)", method, err, time.Since(start))
				}
				t.Logf("%s blob with the object store down: %d after %s", method, resp.StatusCode, time.Since(start).Round(time.Millisecond))
				if resp.StatusCode != http.StatusServiceUnavailable {
					t.Fatalf("%s blob with the object store down: %d %s", method, resp.StatusCode, body)
				}
				if method == "GET" {
					if code, _ := ociError(t, body); code != "UNAVAILABLE" {
						t.Errorf("error code %s, want UNAVAILABLE", code)
					}
				}
			}
			// Within tag_ttl the tag and the small manifest come from
			// memory.
			resp, body, err := do("GET", "/v2/library/down/manifests/1", map[string]string{"Accept": acceptAll})
			if err != nil || resp.StatusCode != 200 || digest.FromBytes(body) != img.Digest {
				t.Fatalf("manifest by tag with the object store down: %v %v", resp, err)
			}
			// The replica says it cannot do its job, so a balancer stops
			// sending to it (its check is at most readyEvery old).
			waitReady := func(want int) {
				t.Helper()
				for deadline := time.Now().Add(3 * readyEvery); ; {
					resp, body, err := do("GET", "/readyz", nil)
					if err == nil && resp.StatusCode == want {
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("/readyz: %v %s, want %d", resp, body, want)
					}
					time.Sleep(200 * time.Millisecond)
				}
			}
			waitReady(http.StatusServiceUnavailable)

			srv.Restart(t)
			waitReady(http.StatusOK)
			resp, _, err = do("GET", blob, nil)
			if err != nil {
				t.Fatal(err)
			}
			want := http.StatusOK
			if redirect {
				want = http.StatusTemporaryRedirect
			}
			if resp.StatusCode != want {
				t.Fatalf("blob after the object store came back: %d, want %d", resp.StatusCode, want)
			}
			if _, err := s.pull("library/down", "1"); err != nil {
				t.Fatalf("pull after the object store came back: %v", err)
			}
		})
	}
}

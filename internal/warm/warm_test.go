package warm

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/regcache/regcache/internal/testhub"
)

// A plain registry whose repositories are named as regcache names them
// (docker.io/library/...) stands in for the server.
func TestAllWarmsEveryImageWithinTheBound(t *testing.T) {
	reg := testhub.StartRegistry(t)
	var refs []string
	want := map[string]testhub.Image{}
	for i := range 5 {
		img := reg.PushImage(t, "docker.io/library/img"+fmt.Sprint(i), "1", testhub.ImageOptions{Layers: i + 1})
		ref := fmt.Sprintf("img%d:1", i)
		refs = append(refs, ref)
		want[ref] = img
	}
	refs = append(refs, "nosuch:1")
	for _, concurrency := range []int{1, 2} {
		t.Run(fmt.Sprintf("concurrency %d", concurrency), func(t *testing.T) {
			tr := &activeImages{next: http.DefaultTransport, images: map[string]int{}}
			opt := Options{Server: reg.Host, Insecure: true, Transport: tr}
			progress := make([]*Progress, len(refs))
			for i := range progress {
				progress[i] = &Progress{}
			}
			var mu sync.Mutex
			var doneOrder []int
			results := All(context.Background(), opt, refs, concurrency, progress, func(i int, r Result) {
				mu.Lock()
				doneOrder = append(doneOrder, i)
				mu.Unlock()
			})
			if len(doneOrder) != len(refs) {
				t.Errorf("done called %d times for %d images", len(doneOrder), len(refs))
			}
			for i, r := range results {
				if r.Ref != refs[i] {
					t.Fatalf("result %d is for %s, want %s (results in input order)", i, r.Ref, refs[i])
				}
				img, ok := want[r.Ref]
				if !ok {
					if r.Err == nil {
						t.Errorf("%s: no error for an image that does not exist", r.Ref)
					}
					continue
				}
				s := progress[i].Snapshot()
				if r.Err != nil || r.Digest != img.Digest.String() || r.Layers != len(img.Layers) || r.Blobs != len(img.Layers)+1 || r.Manifests != 1 {
					t.Errorf("%s: %+v, want digest %s, %d layers", r.Ref, r, img.Digest, len(img.Layers))
				}
				if s.Layers != len(img.Layers) || s.LayersDone != s.Layers || s.BytesDone != s.BytesTotal || s.BytesDone != r.Bytes || r.Bytes == 0 {
					t.Errorf("%s: progress at the end %+v, result bytes %d", r.Ref, s, r.Bytes)
				}
			}
			if tr.max > concurrency {
				t.Errorf("%d images had requests in flight at once, more than --concurrency %d", tr.max, concurrency)
			}
		})
	}
}

// activeImages counts the images with a request in flight, the most at
// once in max.
type activeImages struct {
	next   http.RoundTripper
	mu     sync.Mutex
	images map[string]int
	max    int
}

func (a *activeImages) RoundTrip(r *http.Request) (*http.Response, error) {
	// /v2/docker.io/library/<image>/...
	parts := strings.Split(r.URL.Path, "/")
	if len(parts) < 5 {
		return a.next.RoundTrip(r) // GET /v2/, for no image in particular
	}
	img := parts[4]
	a.mu.Lock()
	a.images[img]++
	if n := len(a.images); n > a.max {
		a.max = n
	}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		if a.images[img]--; a.images[img] == 0 {
			delete(a.images, img)
		}
		a.mu.Unlock()
	}()
	resp, err := a.next.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	// The image stays active until its body has arrived.
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp, err
}

// Platforms select the images of an index; none matching is an error.
func TestImagePlatforms(t *testing.T) {
	reg := testhub.StartRegistry(t)
	idx := reg.PushIndex(t, "docker.io/library/multi", "1", []string{"linux/amd64", "linux/arm64"}, true)
	for _, tc := range []struct {
		platforms []string
		manifests int
		wantErr   bool
	}{
		{nil, 3, false},
		{[]string{"linux/arm64"}, 2, false},
		{[]string{"linux/s390x"}, 1, true},
	} {
		var ps []v1.Platform
		for _, p := range tc.platforms {
			pl, _ := v1.ParsePlatform(p)
			ps = append(ps, *pl)
		}
		r := Image(context.Background(), Options{Server: reg.Host, Insecure: true, Platforms: ps}, "multi:1", nil)
		if (r.Err != nil) != tc.wantErr || (!tc.wantErr && (r.Manifests != tc.manifests || r.Digest != idx.Digest.String())) {
			t.Errorf("platforms %v: %+v, want %d manifests, error %v", tc.platforms, r, tc.manifests, tc.wantErr)
		}
	}
}

package app

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/s3"

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

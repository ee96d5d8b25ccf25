package pull

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/upstream"
)

// blobUpstream serves one blob body and nothing else. Closing the body
// blocks until unblock is closed: it holds the download goroutine in its
// deferred cleanup, where a late discard of the temp file would show.
type blobUpstream struct {
	body    func() io.Reader
	size    int64
	unblock chan struct{}
}

var errOnlyBlobs = errors.New("this test upstream serves one blob")

func (u *blobUpstream) Name() string { return "docker.io" }
func (u *blobUpstream) HeadManifest(context.Context, string, string, []string) (ocispec.Descriptor, error) {
	return ocispec.Descriptor{}, errOnlyBlobs
}
func (u *blobUpstream) GetManifest(context.Context, string, string, []string) (upstream.Manifest, error) {
	return upstream.Manifest{}, errOnlyBlobs
}
func (u *blobUpstream) GetBlobUnverified(context.Context, string, digest.Digest) (upstream.Blob, error) {
	return upstream.Blob{Body: &blockingBody{Reader: u.body(), unblock: u.unblock}, Size: u.size,
		Source: upstream.SourceOrigin, Judge: func(error) {}}, nil
}
func (u *blobUpstream) HeadBlob(context.Context, string, digest.Digest) (ocispec.Descriptor, error) {
	return ocispec.Descriptor{}, errOnlyBlobs
}
func (u *blobUpstream) ResolveTagAtMirror(context.Context, string, string, []string) (upstream.Manifest, error) {
	return upstream.Manifest{}, errOnlyBlobs
}
func (u *blobUpstream) BelowReserve() bool { return false }
func (u *blobUpstream) GetMirroredManifest(context.Context, string, digest.Digest, []string) (upstream.Manifest, error) {
	return upstream.Manifest{}, errOnlyBlobs
}
func (u *blobUpstream) Do(context.Context, string, string, string, url.Values, http.Header) (*http.Response, error) {
	return nil, errOnlyBlobs
}

type blockingBody struct {
	io.Reader
	unblock chan struct{}
}

func (b *blockingBody) Close() error {
	<-b.unblock
	return nil
}

// TestFailedDownloadLeavesNoTempFile: once a client has seen a download
// fail, its bytes are gone from the store's temp dir, however long the
// download goroutine takes to unwind; and nothing enters the cache.
func TestFailedDownloadLeavesNoTempFile(t *testing.T) {
	content := bytes.Repeat([]byte("layer "), 50_000)
	d := digest.FromBytes(content)
	tests := []struct {
		name string
		body func() io.Reader
	}{
		{"digest mismatch", func() io.Reader { return bytes.NewReader(bytes.ToUpper(content)) }},
		{"cut off", func() io.Reader {
			return io.MultiReader(bytes.NewReader(content[:len(content)/2]), iotest.ErrReader(io.ErrUnexpectedEOF))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, err := store.OpenFS(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			up := &blobUpstream{body: tc.body, size: int64(len(content)), unblock: make(chan struct{})}
			c := New(Options{Store: st, Upstreams: map[string]Upstream{"docker.io": up}})
			unblocked := false
			unblock := func() {
				if !unblocked {
					unblocked = true
					close(up.unblock)
				}
			}
			t.Cleanup(unblock)

			b, err := c.Blob(t.Context(), "docker.io", "library/x", d)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(b.Stream)
			b.Close()
			if err == nil {
				t.Fatalf("a failed download read as complete (%d bytes)", len(got))
			}
			if entries, _ := os.ReadDir(filepath.Join(st.Root(), "tmp")); len(entries) != 0 {
				t.Errorf("the client saw the download fail (%v), but %d temp files are left", err, len(entries))
			}

			unblock()
			if err := c.Drain(t.Context()); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Stat(t.Context(), d); err == nil {
				t.Error("the failed download entered the cache")
			}
		})
	}
}

package store

import (
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/ref"
)

func TestLayout(t *testing.T) {
	const hex = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	d := digest.Digest("sha256:" + hex)
	repo, err := ref.NewRepo("docker.io", "library/alpine")
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := ref.NewTag("3.19")
	tests := []struct{ got, want string }{
		{BlobPath(d), "blobs/sha256/aa/" + hex},
		{ManifestTypeKey(d), "manifests/sha256/" + hex},
		{TagKey(repo, tag, 0x0f), "tags/docker.io/library/alpine/_tags/3.19/0f"},
		{LinkKey(repo, d), "links/docker.io/library/alpine/_links/sha256/" + hex},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

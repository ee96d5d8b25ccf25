package index

import (
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/store/storetest"
)

func key(t *testing.T, path, tag string, mask ref.AcceptMask) TagKey {
	t.Helper()
	r, err := ref.NewRepo("docker.io", path)
	if err != nil {
		t.Fatal(err)
	}
	tg, err := ref.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	return TagKey{Repo: r, Tag: tg, Mask: mask}
}

// What the index records outlives it: a new index on the same store (a
// restart, or another replica) reads it back.
func TestIndexPersists(t *testing.T) {
	ctx := context.Background()
	st := storetest.New()
	d := digest.FromString("manifest")
	checked := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	k := key(t, "library/alpine", "3.19", ref.AcceptAll)
	other := key(t, "library/alpine", "3.19", ref.AcceptDockerManifest)

	a := New(Options{Meta: st})
	a.SetTag(ctx, k, Tag{Digest: d, MediaType: "application/vnd.oci.image.index.v1+json", Checked: checked})
	a.Link(ctx, k.Repo, d)
	if err := a.SetMediaType(ctx, d, "application/vnd.oci.image.index.v1+json"); err != nil {
		t.Fatal(err)
	}

	b := New(Options{Meta: st})
	tests := []struct {
		name string
		got  bool
		want bool
	}{
		{"tag for its mask", hasTag(b, k, d, checked), true},
		{"tag for another mask", hasTag(b, other, d, checked), false},
		{"link", b.Linked(ctx, k.Repo, d), true},
		{"link elsewhere", b.Linked(ctx, key(t, "acme/app", "x", 0).Repo, d), false},
		{"media type", func() bool {
			mt, ok := b.MediaType(ctx, d)
			return ok && mt == "application/vnd.oci.image.index.v1+json"
		}(), true},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	b.DeleteTag(ctx, k)
	if _, ok := New(Options{Meta: st}).Tag(ctx, k); ok {
		t.Error("a deleted tag came back")
	}
}

func hasTag(x *Index, k TagKey, d digest.Digest, checked time.Time) bool {
	r, ok := x.Tag(context.Background(), k)
	return ok && r.Digest == d && r.Checked.Equal(checked)
}

// A record that does not parse reads as "not cached", never as a digest.
func TestIndexIgnoresCorruptRecords(t *testing.T) {
	ctx := context.Background()
	st := storetest.New()
	k := key(t, "library/alpine", "3.19", ref.AcceptAll)
	for _, v := range []string{`{"digest":"sha256:nothex"}`, `not json`, ``} {
		st.PutMeta(ctx, store.TagKey(k.Repo, k.Tag, uint8(k.Mask)), []byte(v))
		if r, ok := New(Options{Meta: st}).Tag(ctx, k); ok {
			t.Errorf("record %q read as %+v", v, r)
		}
	}
}

func TestIndexBoundedInMemory(t *testing.T) {
	ctx := context.Background()
	st := storetest.New()
	x := New(Options{Meta: st, Entries: 10})
	for i := range 100 {
		x.SetTag(ctx, key(t, "library/alpine", "t"+string(rune('a'+i%26))+string(rune('a'+i/26)), 0), Tag{Digest: digest.FromString("x")})
	}
	if n := x.tags.c.Len(); n > 10 {
		t.Fatalf("%d tags in memory, bound 10", n)
	}
	// Evicted from memory is not forgotten.
	if _, ok := x.Tag(ctx, key(t, "library/alpine", "taa", 0)); !ok {
		t.Fatal("an entry evicted from memory was not read back from the store")
	}
}

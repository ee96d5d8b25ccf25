package store

import (
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/ref"
)

// The layout of a store. Every backend keeps the same two namespaces, so
// that what one replica writes another reads, whichever backend it runs:
//
//	blobs/<alg>/<first two hex>/<hex>          content: layers, configs and
//	                                            manifests alike, immutable
//	meta/                                       small mutable records
//	    manifests/<alg>/<hex>                   the media type a manifest is
//	                                            served with
//	    tags/<registry>/<repo>/_tags/<tag>/<mask>
//	                                            a tag answer (JSON: digest,
//	                                            media type, when checked), one
//	                                            per Accept mask (two hex digits)
//	    links/<registry>/<repo>/_links/<alg>/<hex>
//	                                            empty: this repository is known
//	                                            to hold this content
//
// The FS backend maps both under its root (plus tmp/ for writes in flight);
// an object store maps them under its key prefix. "_tags" and "_links"
// cannot be repository path components (components start with [a-z0-9]),
// so the records of a repository never collide with those of a nested one.
//
// Every key is built here, from validated names: nothing else concatenates
// paths.

// BlobPath is where content d lives, relative to the store's root.
func BlobPath(d digest.Digest) string {
	h := d.Encoded()
	return "blobs/" + string(d.Algorithm()) + "/" + h[:2] + "/" + h
}

// ManifestTypeKey is the meta key of the media type manifest d is served with.
func ManifestTypeKey(d digest.Digest) string {
	return "manifests/" + d.Algorithm().String() + "/" + d.Encoded()
}

// TagKey is the meta key of the answer to repo:tag for clients whose Accept
// header reduced to mask.
func TagKey(repo ref.Repo, tag ref.Tag, mask uint8) string {
	return fmt.Sprintf("tags/%s/%s/_tags/%s/%02x", repo.Registry(), repo.Path(), tag.String(), mask)
}

// LinkKey is the meta key recording that repo holds content d.
func LinkKey(repo ref.Repo, d digest.Digest) string {
	return "links/" + repo.Registry() + "/" + repo.Path() + "/_links/" + d.Algorithm().String() + "/" + d.Encoded()
}

package storm

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/testhub"
)

// spec is one image tag of the workload.
type spec struct {
	repo, tag string
	// index: a multi-arch OCI index (linux/amd64 + linux/arm64); clients
	// pick the linux/amd64 child by digest.
	index bool
	// dockerList makes the index a Docker manifest list instead of OCI.
	dockerList bool
	layers     int
	layerSize  int64
	oci        bool
	// move: the tag points to a new digest from pull #moveAt on.
	move bool
	// weight is the relative popularity in the random part of the sequence.
	weight int
}

func (s spec) name() string   { return s.repo + ":" + s.tag }
func (s spec) official() bool { return strings.HasPrefix(s.repo, "library/") }
func (s spec) String() string { return s.name() }
func (s spec) isIndex() bool  { return s.index || s.dockerList }
func (s spec) kind() string {
	if s.isIndex() {
		return "index"
	}
	return "image"
}

const kib = 1024

// workloadSpecs are the 20 tags: 12 official images (available on the
// mirror under docker/library/...), 8 non-official ones (origin only).
// Four tags move halfway through: two official, two non-official.
var workloadSpecs = []spec{
	{repo: "library/node", tag: "22", index: true, move: true, weight: 10},
	{repo: "library/python", tag: "3.13", index: true, weight: 8},
	{repo: "library/golang", tag: "1.25", index: true, weight: 6},
	{repo: "library/alpine", tag: "3.21", dockerList: true, weight: 9},
	{repo: "library/nginx", tag: "1.27", layers: 2, layerSize: 384 * kib, move: true, weight: 5},
	{repo: "library/redis", tag: "7.4", layers: 2, layerSize: 256 * kib, weight: 4},
	{repo: "library/postgres", tag: "17", layers: 3, layerSize: 512 * kib, weight: 4},
	{repo: "library/httpd", tag: "2.4", layers: 2, layerSize: 256 * kib, weight: 2},
	{repo: "library/busybox", tag: "1.37", layers: 1, layerSize: 64 * kib, weight: 3},
	{repo: "library/ubuntu", tag: "24.04", layers: 1, layerSize: 768 * kib, weight: 5},
	{repo: "library/debian", tag: "bookworm", layers: 1, layerSize: 1024 * kib, weight: 3},
	{repo: "library/maven", tag: "3.9", layers: 3, layerSize: 512 * kib, weight: 2},

	{repo: "acme/api", tag: "main", layers: 2, layerSize: 512 * kib, oci: true, move: true, weight: 6},
	{repo: "acme/web", tag: "main", layers: 2, layerSize: 384 * kib, oci: true, move: true, weight: 5},
	{repo: "acme/worker", tag: "main", layers: 2, layerSize: 256 * kib, oci: true, weight: 3},
	{repo: "acme/builder", tag: "1.4", layers: 3, layerSize: 512 * kib, weight: 4},
	{repo: "acme/ci-tools", tag: "latest", layers: 2, layerSize: 256 * kib, weight: 4},
	{repo: "acme/migrator", tag: "v12", layers: 1, layerSize: 128 * kib, oci: true, weight: 1},
	{repo: "acme/e2e", tag: "stable", layers: 2, layerSize: 384 * kib, weight: 2},
	{repo: "acme/lint", tag: "v3", layers: 1, layerSize: 128 * kib, weight: 2},
}

// hotTag is pulled by every job at once at the start of each half (a storm
// of jobs starting on the same base image; after the move it has a new
// digest).
const hotTag = 0

// manifestRef is a manifest stored in the backend.
type manifestRef struct {
	digest    digest.Digest
	mediaType string
	data      []byte
}

// seeded is one workload tag with its content in the backend.
type seeded struct {
	spec
	orig, next manifestRef // next is set only when spec.move
	// children are the linux/amd64 child digests of orig and next (index only).
	origChild, nextChild digest.Digest
}

// seedWorkload pushes every tag and, for moving tags, the content they move
// to (by digest only: the move itself is a manifest PUT under the tag).
func seedWorkload(t testing.TB, reg *testhub.Registry) []*seeded {
	t.Helper()
	var out []*seeded
	for _, s := range workloadSpecs {
		w := &seeded{spec: s}
		push := func(tag string) (manifestRef, digest.Digest) {
			if s.isIndex() {
				idx := reg.PushIndex(t, s.repo, tag, []string{"linux/amd64", "linux/arm64"}, !s.dockerList)
				return manifestRef{idx.Digest, idx.MediaType, idx.Manifest}, idx.Children["linux/amd64"].Digest
			}
			img := reg.PushImage(t, s.repo, tag, testhub.ImageOptions{
				Layers: s.layers, LayerSize: s.layerSize, OCI: s.oci, Uncompressed: true,
			})
			return manifestRef{img.Digest, img.MediaType, img.Manifest}, ""
		}
		w.orig, w.origChild = push(s.tag)
		if s.move {
			w.next, w.nextChild = push("")
		}
		out = append(out, w)
	}
	return out
}

// putTag points repo:tag at m in the backend registry (which is open).
func putTag(t testing.TB, reg *testhub.Registry, repo, tag string, m manifestRef) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, reg.URL+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(m.data))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", m.mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("retagging %s:%s: %v", repo, tag, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("retagging %s:%s: status %d", repo, tag, resp.StatusCode)
	}
}

// resetTags points every moving tag back at its original digest.
func resetTags(t testing.TB, reg *testhub.Registry, w []*seeded) {
	for _, s := range w {
		if s.move {
			putTag(t, reg, s.repo, s.tag, s.orig)
		}
	}
}

// moveTags points every moving tag at its new digest.
func moveTags(t testing.TB, reg *testhub.Registry, w []*seeded) {
	for _, s := range w {
		if s.move {
			putTag(t, reg, s.repo, s.tag, s.next)
		}
	}
}

// moveOrder is the order in which the moving tags (other than the hot tag,
// which every job pulls at the start of the second half) are first pulled
// after the move, each followed by 2*jobs pulls of tags that do not move,
// so each one's revalidation is over before the next one starts and the
// run is the same every time:
//   - acme/web spends a counted pull (the origin has 2 left, above the
//     reserve of 1), leaving the budget at the reserve;
//   - acme/api then meets the reserve: by design it is served stale;
//   - library/nginx also meets the reserve, but the mirror has its new
//     digest, which costs no counted pull.
var moveOrder = []string{"acme/web:main", "acme/api:main", "library/nginx:1.27"}

// sequence returns the order of pulls as indexes into workloadSpecs, and the
// index at which the moving tags move (the second half starts there). Each
// half starts with `jobs` pulls of the hot tag, so every job pulls it at the
// same moment; the second half then has the moving tags in moveOrder; then
// one pull of every tag in random order, then pulls drawn by popularity. The
// sequence is the same for every system and every run.
func sequence(pulls, jobs int) (seq []int, moveAt int) {
	rng := rand.New(rand.NewPCG(20261123, 3))
	draw := func(moving bool) int {
		total := 0
		for _, s := range workloadSpecs {
			if moving || !s.move {
				total += s.weight
			}
		}
		r := rng.IntN(total)
		for i, s := range workloadSpecs {
			if !moving && s.move {
				continue
			}
			if r < s.weight {
				return i
			}
			r -= s.weight
		}
		panic("unreachable")
	}
	byName := map[string]int{}
	for i, s := range workloadSpecs {
		byName[s.name()] = i
	}
	half := func(n int, afterMove bool) []int {
		var out []int
		add := func(i int) {
			if len(out) < n {
				out = append(out, i)
			}
		}
		for i := 0; i < jobs; i++ {
			add(hotTag)
		}
		if afterMove {
			for _, name := range moveOrder {
				add(byName[name])
				for i := 0; i < 2*jobs; i++ {
					add(draw(false))
				}
			}
		}
		for _, i := range rng.Perm(len(workloadSpecs)) {
			add(i)
		}
		for len(out) < n {
			add(draw(true))
		}
		return out
	}
	moveAt = pulls / 2
	seq = append(half(moveAt, false), half(pulls-moveAt, true)...)
	return seq, moveAt
}

func describeWorkload(pulls, jobs int) string {
	nOff, nMove := 0, 0
	var moves []string
	for _, s := range workloadSpecs {
		if s.official() {
			nOff++
		}
		if s.move {
			nMove++
			moves = append(moves, s.name())
		}
	}
	return fmt.Sprintf("%d pulls by %d concurrent jobs over %d tags (%d official, %d non-official); %d tags move at pull #%d: %s",
		pulls, jobs, len(workloadSpecs), nOff, len(workloadSpecs)-nOff, nMove, pulls/2, strings.Join(moves, ", "))
}

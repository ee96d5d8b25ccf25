package refscan

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"
)

// Ref is one image reference found in a file.
type Ref struct {
	File   string `json:"file"`
	Line   int    `json:"line"`
	Column int    `json:"column"`
	// Kind says where the reference was found, e.g. "dockerfile FROM".
	Kind string `json:"kind"`
	// Original is the text as written in the file.
	Original string `json:"original"`
	// Resolved is Original after ARG substitution; empty when equal.
	Resolved string `json:"resolved,omitempty"`
	// Normalized is the fully qualified reference, e.g.
	// docker.io/library/node:21. Empty when it cannot be determined.
	Normalized string `json:"normalized,omitempty"`
	Registry   string `json:"registry,omitempty"`
	DockerHub  bool   `json:"dockerhub"`
	// Official is true for Docker Official Images (docker.io/library/...),
	// the only ones mirrored by ECR Public under docker/library.
	Official bool   `json:"official"`
	Pinned   bool   `json:"pinned"`
	Platform string `json:"platform,omitempty"`
	// PullsPerRun estimates the Docker Hub pulls this reference costs per
	// pipeline run; see PullEstimateHelp.
	PullsPerRun int `json:"pulls_per_run"`
	// Problem says why the reference could not be resolved or cannot be
	// rewritten safely. Such references are reported, never guessed.
	Problem string `json:"problem,omitempty"`
	// Note carries extra context (e.g. which ARG default was used).
	Note string `json:"note,omitempty"`
	// OverriddenBy names the place (file:line) that replaces this
	// reference before anything pulls it, such as a kustomize images
	// entry. The pull is counted there, and a rewrite changes it there.
	OverriddenBy string `json:"overridden_by,omitempty"`

	// Span is the byte range of the literal name[:tag][@digest] text that a
	// rewrite may replace. Nil when the reference must not be rewritten.
	Span *Span `json:"-"`

	// kustomizeName is the image name a kustomize images entry matches.
	kustomizeName string
}

// Span is a byte range [Start, End) in a file whose content is Text.
type Span struct {
	Start, End int
	Text       string
	// Ref is the reference a rewrite maps, when it is not Text itself
	// (an insertion, where Text is empty). Format, if set, is what
	// replaces the range, with %s for the mapped reference.
	Ref    string
	Format string
}

// Reference is the image reference a rewrite maps.
func (s *Span) Reference() string {
	if s.Ref != "" {
		return s.Ref
	}
	return s.Text
}

// PullsFromHub reports whether pulling the reference, as the file is
// used, goes to Docker Hub. A reference that something else replaces
// first (OverriddenBy) is judged where it is replaced.
func (r Ref) PullsFromHub() bool { return r.DockerHub && r.OverriddenBy == "" }

// PullEstimateHelp explains how PullsPerRun is computed. It is shown in the
// scan help text so the numbers are never mistaken for measurements.
const PullEstimateHelp = `Pulls per run is an estimate of the manifest GETs that Docker Hub counts
against the rate limit for one pipeline run, assuming fresh runners with an
empty image store (the usual case for hosted CI):
  - 1 per Docker Hub reference per job or build that uses it; references of
    other registries count 0;
  - digest-pinned references count too: a fresh runner still GETs the
    manifest (through regcache they are served from cache);
  - a Dockerfile stage without a fixed --platform counts once per platform
    built (--platforms, default 1), and so do COPY --from and
    RUN --mount=...,from= images; the same image and platform used twice in
    one Dockerfile counts once, as BuildKit resolves it once per build;
  - the BuildKit frontend of a "# syntax=" line counts once per build;
  - YAML anchors, GitLab "extends" and compose "extends" count once per job
    or service that uses them (a compose base in another file is reported
    in that file); hidden GitLab jobs (".name") count 0 by themselves; a
    GitHub matrix counts once per combination; CodeBuild commands once per
    batch build;
  - a kustomize images entry counts once per container of its
    kustomization's manifests that it replaces; those containers count 0;
  - an image pulled earlier in the same job or build is not counted again;
  - a reference whose registry is unknown (a name from an ARG without
    default, a template) counts 0 and is listed with the problem; one where
    only the tag is a variable still counts.`

// FileError is a problem reading or parsing a file. Line is 0 when the error
// is not tied to a line (unreadable file).
type FileError struct {
	File string `json:"file"`
	Line int    `json:"line,omitempty"`
	Msg  string `json:"error"`
}

func (e *FileError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// hasTemplate reports whether s contains a variable or template expression
// that only the CI system or a template engine can expand.
func hasTemplate(s string) bool {
	return strings.Contains(s, "$") || strings.Contains(s, "{{") || strings.Contains(s, "<<")
}

// fill sets the normalized fields of r from the image text s (Original after
// any substitution). It records a Problem when s is not a valid reference.
func (r *Ref) fill(s string) {
	if hasTemplate(s) {
		if r.Problem == "" {
			r.Problem = "template or variable expression; resolved only at run time"
		}
		return
	}
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		r.Problem = "not a valid image reference: " + err.Error()
		return
	}
	r.Registry = reference.Domain(named)
	r.DockerHub = r.Registry == "docker.io"
	r.Official = r.DockerHub && strings.HasPrefix(reference.Path(named), "library/") &&
		strings.Count(reference.Path(named), "/") == 1
	_, r.Pinned = named.(reference.Digested)
	r.Normalized = reference.TagNameOnly(named).String()
}

// NameEnd returns the length of the repository name at the start of s: the
// part before the tag or digest. The colon of a registry port is not a tag
// separator because it comes before the first slash.
func NameEnd(s string) int {
	end := len(s)
	if i := strings.IndexByte(s, '@'); i >= 0 {
		end = i
	}
	slash := strings.LastIndexByte(s[:end], '/')
	if i := strings.IndexByte(s[slash+1:end], ':'); i >= 0 {
		end = slash + 1 + i
	}
	return end
}

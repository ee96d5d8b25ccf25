package refscan

import (
	"testing"
	"unicode/utf8"
)

// The scanners read whatever a repository holds: none may panic, and every
// reference they report must point inside the file, at the text it quotes.
func fuzzScanner(f *testing.F, format Format, seeds ...string) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		refs, _ := ScanBytes("fuzz", format, src, Options{})
		// YAML also ends a line at a carriage return that no newline
		// follows; a Dockerfile does not.
		lines := 1
		for i, c := range src {
			if c == '\n' || (format != FormatDockerfile && c == '\r' && (i+1 == len(src) || src[i+1] != '\n')) {
				lines++
			}
		}
		for _, r := range refs {
			if r.Line < 1 || r.Line > lines {
				t.Fatalf("reference %+v on line %d of a %d-line file", r, r.Line, lines)
			}
			if !utf8.ValidString(r.Original) && utf8.Valid(src) {
				t.Fatalf("reference %+v is not valid UTF-8 in a valid file", r)
			}
			if r.PullsPerRun < 0 {
				t.Fatalf("negative pulls: %+v", r)
			}
		}
	})
}

func FuzzDockerfile(f *testing.F) {
	fuzzScanner(f, FormatDockerfile,
		"# syntax=docker/dockerfile:1.7\nARG BASE=python:3.12-slim\nFROM ${BASE} AS build\nRUN --mount=type=cache,from=alpine:3.19,target=/x true\nFROM build\nCOPY --from=nginx:1.25 /a /b\n",
		"FROM --platform=$BUILDPLATFORM golang:1.22@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
		"FROM \\\n  node:21 \\\n  AS x\n",
		"ARG A\nARG B=${A:-x}\nFROM $B\n",
		"FROM scratch\n",
	)
}

func FuzzCompose(f *testing.F) {
	fuzzScanner(f, FormatCompose,
		"services:\n  web:\n    image: nginx:1.25\n  tool:\n    image: ${TOOL_IMAGE:-alpine:3.19}\n  child:\n    extends: {service: web}\n",
		"services:\n  a:\n    build: .\n    image: x/y\n",
		"services: [1, 2]\n",
		"x: &a {image: b}\ny: *a\n",
	)
}

func FuzzYAML(f *testing.F) {
	fuzzScanner(f, FormatYAML,
		"apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - image: redis:7\n",
		"image: docker:29\nservices:\n  - docker:29-dind\n",
		"images:\n- name: nginx\n  newName: cache:5000/docker.io/library/nginx\n  newTag: 1.25\n",
		"jobs:\n  build:\n    docker:\n      - image: cimg/base:stable\n",
		"a: [",
	)
}

func FuzzKustomization(f *testing.F) {
	fuzzScanner(f, FormatKustomize,
		"resources: [deploy.yaml]\nimages:\n- name: nginx\n  newName: cache:5000/docker.io/library/nginx\n  digest: sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
		"images: {}\n",
	)
}

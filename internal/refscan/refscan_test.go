package refscan

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	gold "github.com/regcache/regcache/internal/golden"
)

var update = flag.Bool("update", false, "rewrite golden files")

// golden compares got with testdata/<name>, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	gold.Check(t, filepath.Join("testdata", name), got, *update)
}

// scanCorpus scans testdata/corpus with paths relative to it.
func scanCorpus(t *testing.T) Result {
	t.Helper()
	wd, _ := os.Getwd()
	t.Cleanup(func() { os.Chdir(wd) })
	if err := os.Chdir("testdata/corpus"); err != nil {
		t.Fatal(err)
	}
	return Scan([]string{"."}, Options{})
}

func expectedLine(r Ref) string {
	v := r.Normalized
	if v == "" {
		v = "unresolved: " + r.Original
	}
	return fmt.Sprintf("%s:%d %s %d", r.File, r.Line, v, r.PullsPerRun)
}

// TestCorpusExpected is acceptance criterion 1: scan finds exactly the
// references of the hand-written list, nothing missed, nothing invented.
func TestCorpusExpected(t *testing.T) {
	f, err := os.Open("testdata/corpus.expected")
	if err != nil {
		t.Fatal(err)
	}
	res := scanCorpus(t)
	if len(res.Errors) > 0 {
		t.Fatalf("unexpected errors: %v", res.Errors)
	}
	defer f.Close()
	var want []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		want = append(want, strings.Join(strings.Fields(line), " "))
	}
	var got []string
	for _, r := range res.Refs {
		got = append(got, expectedLine(r))
	}
	sort.Strings(want)
	sort.Strings(got)
	missing, extra := diffSets(want, got)
	for _, m := range missing {
		t.Errorf("missed: %s", m)
	}
	for _, e := range extra {
		t.Errorf("invented (or wrong): %s", e)
	}
}

func diffSets(want, got []string) (missing, extra []string) {
	count := map[string]int{}
	for _, w := range want {
		count[w]++
	}
	for _, g := range got {
		count[g]--
	}
	for k, n := range count {
		for ; n > 0; n-- {
			missing = append(missing, k)
		}
		for ; n < 0; n++ {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	return missing, extra
}

// TestCorpusGolden pins every field of the scan output.
func TestCorpusGolden(t *testing.T) {
	wd, _ := os.Getwd()
	res := scanCorpus(t)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		t.Fatal(err)
	}
	os.Chdir(wd)
	golden(t, "scan.golden.json", buf.Bytes())
}

// TestCorpusTableGolden pins the human-readable output.
func TestCorpusTableGolden(t *testing.T) {
	wd, _ := os.Getwd()
	res := scanCorpus(t)
	var buf bytes.Buffer
	WriteTable(&buf, res)
	os.Chdir(wd)
	golden(t, "scan.golden.txt", buf.Bytes())
}

// TestSpansMatchText checks that every rewritable span points at exactly
// the bytes it claims, which is what makes rewriting surgical.
func TestSpansMatchText(t *testing.T) {
	res := scanCorpus(t)
	for _, r := range res.Refs {
		if r.Span == nil {
			continue
		}
		src, err := os.ReadFile(r.File)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(src[r.Span.Start:r.Span.End]); got != r.Span.Text {
			t.Errorf("%s:%d: span has %q, want %q", r.File, r.Line, got, r.Span.Text)
		}
	}
}

func TestDockerfile(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // "line original -> normalized|problem"
	}{
		{"stage names are not images", "FROM golang:1.22 AS Build\nFROM build\nCOPY --from=BUILD /a /b\nCOPY --from=0 /a /b\n",
			[]string{"1 golang:1.22 -> docker.io/library/golang:1.22"}},
		{"stage named like its image", "FROM node AS node\nFROM node\n",
			[]string{"1 node -> docker.io/library/node:latest"}},
		{"scratch", "FROM scratch\n", nil},
		{"continuation", "FROM \\\n  --platform=linux/amd64 \\\n  alpine:3.19 AS a\n",
			[]string{"3 alpine:3.19 -> docker.io/library/alpine:3.19"}},
		{"escape directive", "# escape=`\nFROM alpine:3.19 `\n  AS a\nRUN echo \\\nFROM x\n",
			// With ` as escape a trailing backslash continues nothing.
			[]string{"2 alpine:3.19 -> docker.io/library/alpine:3.19", "5 x -> docker.io/library/x:latest"}},
		{"heredoc body skipped", "FROM alpine\nRUN <<-EOT\n\tFROM ubuntu\n\tEOT\nCOPY --from=busybox:1 / /\n",
			[]string{"1 alpine -> docker.io/library/alpine:latest", "5 busybox:1 -> docker.io/library/busybox:1"}},
		{"stage ARG not visible to FROM", "FROM alpine\nARG V=1\nFROM node:${V}\n",
			[]string{"1 alpine -> docker.io/library/alpine:latest", "3 node:${V} -> ARG V has no default before the first FROM; set only by --build-arg"}},
		{"default operator", "ARG V\nFROM node:${V:-20}\n", []string{"2 node:${V:-20} -> docker.io/library/node:20"}},
		{"comment inside continuation", "FROM \\\n# note\n  redis:7\n", []string{"3 redis:7 -> docker.io/library/redis:7"}},
		{"lowercase instructions", "from alpine as a\ncopy --from=nginx / /\n",
			[]string{"1 alpine -> docker.io/library/alpine:latest", "2 nginx -> docker.io/library/nginx:latest"}},
		{"syntax directive", "#  syntax = docker/dockerfile:1\n# escape=`\nFROM alpine\n",
			[]string{"1 docker/dockerfile:1 -> docker.io/docker/dockerfile:1", "3 alpine -> docker.io/library/alpine:latest"}},
		{"syntax after a comment is only a comment", "# build me\n# syntax=docker/dockerfile:1\nFROM alpine\n",
			[]string{"3 alpine -> docker.io/library/alpine:latest"}},
		{"RUN --mount from images and stages", "FROM alpine AS a\nRUN --mount=type=bind,from=a,target=/a --mount=from=0,target=/b \\\n  --mount=type=cache,target=/c,from=\"busybox:1\" --network=none true\nRUN --mount=type=secret,id=x true\n",
			[]string{"1 alpine -> docker.io/library/alpine:latest", "3 busybox:1 -> docker.io/library/busybox:1"}},
		{"ARG default used only as an image", "ARG BASE='node:21'\nFROM ${BASE}\nFROM $BASE AS b\n",
			[]string{"2 ${BASE} -> docker.io/library/node:21", "3 $BASE -> docker.io/library/node:21"}},
		{"ARG also used in a RUN", "ARG BASE=node:21\nFROM ${BASE}\nARG BASE\nRUN <<EOF\necho $BASE\nEOF\n",
			[]string{"2 ${BASE} -> image name is the ARG BASE, which is also used for other things; rewrite its default by hand"}},
		{"ARG used with an operator", "ARG BASE=node:21\nFROM ${BASE:-node:20}\n",
			[]string{"2 ${BASE:-node:20} -> image name is built from an ARG; rewrite the ARG default by hand"}},
		{"ARG default with a variable", "ARG V=21\nARG BASE=node:${V}\nFROM ${BASE}\n",
			[]string{"3 ${BASE} -> image name is the ARG BASE, whose default is not one literal reference; rewrite it by hand"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, r := range scanDockerfile("Dockerfile", []byte(tt.src), 1) {
				v := r.Normalized
				if v == "" || (r.Problem != "" && !strings.Contains(r.Problem, "only the name")) {
					v = r.Problem
				}
				got = append(got, fmt.Sprintf("%d %s -> %s", r.Line, r.Original, v))
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// TestArgDefaultSpan: a reference named by a whole ARG is rewritten at the
// ARG's default, which may be quoted; every use points at the same bytes.
func TestArgDefaultSpan(t *testing.T) {
	src := "ARG BASE=\"python:3.12-slim\"\nFROM ${BASE} AS a\nFROM ${BASE}\n"
	refs := scanDockerfile("Dockerfile", []byte(src), 1)
	if len(refs) != 2 {
		t.Fatalf("refs = %+v", refs)
	}
	for _, r := range refs {
		if r.Span == nil || src[r.Span.Start:r.Span.End] != "python:3.12-slim" || r.Problem != "" {
			t.Errorf("line %d: span %+v, problem %q", r.Line, r.Span, r.Problem)
		}
	}
	if refs[0].PullsPerRun+refs[1].PullsPerRun != 1 {
		t.Errorf("one image twice in one build counts %d pulls, want 1", refs[0].PullsPerRun+refs[1].PullsPerRun)
	}
}

func TestPlatformsMultiplyStagesWithoutFixedPlatform(t *testing.T) {
	src := "# syntax=docker/dockerfile:1\nFROM --platform=$BUILDPLATFORM golang:1.22 AS b\nFROM alpine:3.19\nFROM --platform=linux/arm64 redis:7\nFROM alpine:3.19\nRUN --mount=from=busybox,target=/b true\n"
	var got []int
	for _, r := range scanDockerfile("Dockerfile", []byte(src), 3) {
		got = append(got, r.PullsPerRun)
	}
	// The frontend is resolved once per build, whatever the platforms.
	if fmt.Sprint(got) != "[1 1 3 1 0 3]" {
		t.Errorf("pulls = %v, want [1 1 3 1 0 3]", got)
	}
}

func TestShellImages(t *testing.T) {
	tests := []struct {
		script string
		want   []string
	}{
		{"docker pull alpine:3.19", []string{"alpine:3.19"}},
		{"docker pull --platform linux/arm64 alpine", []string{"alpine"}},
		{"docker run --rm -e A=1 -v /a:/b -p 80:80 --name x nginx:1 nginx -g off", []string{"nginx:1"}},
		{"docker run --rm=true --network=host redis", []string{"redis"}},
		{"docker image pull a && podman run b; docker container run c | cat", []string{"a", "b", "c"}},
		{"docker build -t x .\ndocker push x", nil},
		{"echo docker pull", nil},
		{"docker run \\\n  --rm \\\n  busybox echo", []string{"busybox"}},
		{`docker run "quoted:image"`, nil},
	}
	for _, tt := range tests {
		var got []string
		for _, r := range shellImages(tt.script) {
			got = append(got, r.text)
			if tt.script[r.index:r.index+len(r.text)] != r.text {
				t.Errorf("%q: index %d does not point at %q", tt.script, r.index, r.text)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%q: got %v, want %v", tt.script, got, tt.want)
		}
	}
}

func TestClassify(t *testing.T) {
	tests := map[string]Format{
		"Dockerfile": FormatDockerfile, "app/Dockerfile.prod": FormatDockerfile, "x/api.dockerfile": FormatDockerfile,
		"Containerfile": FormatDockerfile, ".gitlab-ci.yml": FormatGitLab, "ci/deploy.gitlab-ci.yml": FormatGitLab,
		".circleci/config.yml": FormatCircleCI, "a/.github/workflows/ci.yaml": FormatGitHub,
		"buildspec.yml": FormatCodeBuild, "buildspec-release.yaml": FormatCodeBuild,
		"docker-compose.override.yml": FormatCompose, "compose.yaml": FormatCompose,
		"chart/values-prod.yaml": FormatHelm, "k8s/deploy.yaml": FormatYAML,
		"README.md": FormatNone, "main.go": FormatNone, "dockerfile-lint.yml": FormatNone,
		"k/kustomization.yaml": FormatKustomize, "k/Kustomization": FormatKustomize, "kustomization.yml": FormatKustomize,
	}
	for p, want := range tests {
		if got := Classify(p); got != want {
			t.Errorf("Classify(%q) = %q, want %q", p, got, want)
		}
	}
}

// TestBadInput: unparseable YAML, a binary file and an unreadable path are
// reported with file (and line where there is one) and yield no references.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badYAML := write("docker-compose.yml", []byte("services:\n  web:\n\timage: nginx\n"))
	binary := write("Dockerfile", []byte("FROM alpine\n\x00\x01\x02"))
	missing := filepath.Join(dir, "nope", "Dockerfile")

	res := Scan([]string{badYAML, binary, missing}, Options{})
	if len(res.Refs) != 0 {
		t.Errorf("refs from bad input: %v", res.Refs)
	}
	want := map[string]int{badYAML: 3, binary: 2, missing: 0}
	if len(res.Errors) != len(want) {
		t.Fatalf("errors = %v", res.Errors)
	}
	for _, e := range res.Errors {
		line, ok := want[e.File]
		if !ok || e.Line != line {
			t.Errorf("error %v: want line %d", e.Error(), line)
		}
	}
	if os.Geteuid() != 0 {
		p := write("sub/Dockerfile", []byte("FROM alpine\n"))
		os.Chmod(p, 0)
		if _, err := ScanFile(p, Options{}); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("unreadable file: %v", err)
		}
	}
}

func TestExplicitUnknownFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(p, []byte("FROM node:21 in prose\n"), 0o644)
	res := Scan([]string{p, p}, Options{})
	if len(res.Refs) != 0 || len(res.Errors) != 1 {
		t.Errorf("got %+v", res)
	}
}

// YAML ends lines at \n, \r\n and a lone \r (old Mac files) alike: the
// reference's line, column and span must agree with each, or it would be
// reported past the end of the file and could not be rewritten.
func TestYAMLLineEndings(t *testing.T) {
	tests := []struct {
		name, src    string
		line, column int
	}{
		{"LF", "services:\n  web:\n    image: nginx:1.25\n", 3, 12},
		{"CRLF", "services:\r\n  web:\r\n    image: nginx:1.25\r\n", 3, 12},
		{"CR", "services:\r  web:\r    image: nginx:1.25\r", 3, 12},
		{"CR, quoted", "services:\r  web:\r    image: 'nginx:1.25'\r", 3, 13},
		{"CR then LF", "services:\r  web:\n    image: nginx:1.25", 3, 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			refs, ferr := ScanBytes("compose.yaml", FormatCompose, []byte(tt.src), Options{})
			if ferr != nil || len(refs) != 1 {
				t.Fatalf("refs %+v, error %v", refs, ferr)
			}
			r := refs[0]
			if r.Line != tt.line || r.Column != tt.column {
				t.Errorf("at %d:%d, want %d:%d", r.Line, r.Column, tt.line, tt.column)
			}
			if r.Span == nil {
				t.Fatal("no span: the reference could not be rewritten")
			}
			if got := tt.src[r.Span.Start:r.Span.End]; got != "nginx:1.25" || got != r.Span.Text {
				t.Errorf("span has %q (text %q), want nginx:1.25", got, r.Span.Text)
			}
		})
	}
}

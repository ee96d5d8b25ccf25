package rewrite

import (
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	gold "github.com/regcache/regcache/internal/golden"

	"github.com/regcache/regcache/internal/refscan"
)

var update = flag.Bool("update", false, "rewrite golden files")

// golden compares got with pkgDir/testdata/name (tests change directory,
// so the package directory is passed in).
func golden(t *testing.T, pkgDir, name string, got []byte) {
	gold.Check(t, filepath.Join(pkgDir, "testdata", name), got, *update)
}

func TestMap(t *testing.T) {
	server := Target{Server: "cache.internal:5000"}
	ecr := Target{ECRPublic: true}
	only := Target{Server: "cache.internal:5000", Registries: []string{"docker.io"}}
	const dg = "sha256:6d1b3b2bb1ed1ed6d1b3b2bb1ed1ed6d1b3b2bb1ed1ed6d1b3b2bb1ed1ed6d1b"
	tests := []struct {
		t    Target
		in   string
		want string
		out  Outcome
	}{
		{server, "node:21", "cache.internal:5000/docker.io/library/node:21", Changed},
		{server, "node", "cache.internal:5000/docker.io/library/node", Changed},
		{server, "bitnami/redis:7", "cache.internal:5000/docker.io/bitnami/redis:7", Changed},
		{server, "ghcr.io/org/img:tag", "cache.internal:5000/ghcr.io/org/img:tag", Changed},
		{server, "node:21@" + dg, "cache.internal:5000/docker.io/library/node:21@" + dg, Changed},
		{server, "node@" + dg, "cache.internal:5000/docker.io/library/node@" + dg, Changed},
		{server, "cache.internal:5000/docker.io/library/node:21", "cache.internal:5000/docker.io/library/node:21", Unchanged},
		{server, "localhost:5001/app:1", "localhost:5001/app:1", Refused},
		{only, "ghcr.io/org/img:tag", "ghcr.io/org/img:tag", Unchanged},
		{only, "docker.io/library/node:21", "cache.internal:5000/docker.io/library/node:21", Changed},
		{ecr, "node:21.7.0-alpine3.19", "public.ecr.aws/docker/library/node:21.7.0-alpine3.19", Changed},
		{ecr, "library/node:21", "public.ecr.aws/docker/library/node:21", Changed},
		{ecr, "docker.io/node", "public.ecr.aws/docker/library/node", Changed},
		{ecr, "index.docker.io/library/httpd:latest", "public.ecr.aws/docker/library/httpd:latest", Changed},
		{ecr, "node:21@" + dg, "public.ecr.aws/docker/library/node:21@" + dg, Changed},
		{ecr, "cimg/node:21", "cimg/node:21", Refused},
		{ecr, "public.ecr.aws/docker/library/node:21", "public.ecr.aws/docker/library/node:21", Unchanged},
		{ecr, "ghcr.io/org/img", "ghcr.io/org/img", Unchanged},
	}
	for _, tt := range tests {
		got, out, reason := tt.t.Map(tt.in)
		if got != tt.want || out != tt.out {
			t.Errorf("%+v.Map(%q) = %q, %v (%s); want %q, %v", tt.t, tt.in, got, out, reason, tt.want, tt.out)
		}
	}
}

func TestParseTarget(t *testing.T) {
	for in, want := range map[string]string{
		"cache.internal:5000": "cache.internal:5000", "http://cache.internal:5000/": "cache.internal:5000",
		"https://regcache.example.com": "regcache.example.com",
	} {
		tg, err := ParseTarget(in, nil)
		if err != nil || tg.Server != want {
			t.Errorf("ParseTarget(%q) = %+v, %v", in, tg, err)
		}
	}
	for _, bad := range []string{"", "cache:5000/path", "ecr", "http://"} {
		if _, err := ParseTarget(bad, nil); err == nil {
			t.Errorf("ParseTarget(%q) accepted", bad)
		}
	}
}

// copyCorpus copies refscan's corpus into a temporary directory and makes
// it the working directory, so reported paths are relative. It returns the
// package directory.
func copyCorpus(t *testing.T) string {
	t.Helper()
	src, err := filepath.Abs("../refscan/testdata/corpus")
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	wd := mustGetwd(t)
	t.Cleanup(func() { os.Chdir(wd) })
	if err := os.Chdir(dst); err != nil {
		t.Fatal(err)
	}
	return wd
}

// rewriteAll runs one rewrite pass over the working directory like the
// CLI does and returns the combined diff, changes and skips.
func rewriteAll(t *testing.T, tg Target) (diff string, changes []Change, skips []Skip) {
	t.Helper()
	res := refscan.Scan([]string{"."}, refscan.Options{})
	if len(res.Errors) > 0 {
		t.Fatalf("scan errors: %v", res.Errors)
	}
	byFile := map[string][]refscan.Ref{}
	for _, r := range res.Refs {
		byFile[r.File] = append(byFile[r.File], r)
	}
	var files []string
	for f := range byFile {
		files = append(files, f)
	}
	sort.Strings(files)
	var sb strings.Builder
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		fr := Plan(f, src, byFile[f], tg)
		changes = append(changes, fr.Changes...)
		skips = append(skips, fr.Skips...)
		sb.WriteString(UnifiedDiff(f, fr.Old, fr.New))
		if fr.Changed() {
			if err := WriteAtomic(f, fr.New); err != nil {
				t.Fatal(err)
			}
		}
	}
	return sb.String(), changes, skips
}

func skipKeys(skips []Skip) map[string]bool {
	m := map[string]bool{}
	for _, s := range skips {
		m[fmt.Sprintf("%s:%d", s.Ref.File, s.Ref.Line)] = true
	}
	return m
}

// TestRoundTripServer: after a rewrite, scan finds no Docker Hub reference
// except those rewrite reported as unsafe, and a second rewrite is a no-op.
func TestRoundTripServer(t *testing.T) {
	pkg := copyCorpus(t)
	tg := Target{Server: "cache.internal:5000"}
	diff, changes, skips := rewriteAll(t, tg)
	golden(t, pkg, "server.diff", []byte(diff))
	for _, c := range changes {
		if strings.Contains(c.Old, "@sha256:") && !strings.HasSuffix(c.New, c.Old[strings.Index(c.Old, "@"):]) {
			t.Errorf("digest lost: %s -> %s", c.Old, c.New)
		}
	}
	skipped := skipKeys(skips)
	for _, r := range refscan.Scan([]string{"."}, refscan.Options{}).Refs {
		if r.PullsFromHub() && !skipped[fmt.Sprintf("%s:%d", r.File, r.Line)] {
			t.Errorf("%s:%d: %s still pulls from Docker Hub and was not reported", r.File, r.Line, r.Original)
		}
	}
	diff2, changes2, _ := rewriteAll(t, tg)
	if diff2 != "" || len(changes2) != 0 {
		t.Errorf("second rewrite is not a no-op:\n%s", diff2)
	}
}

func TestRoundTripECRPublic(t *testing.T) {
	pkg := copyCorpus(t)
	tg := Target{ECRPublic: true}
	diff, changes, skips := rewriteAll(t, tg)
	golden(t, pkg, "ecr-public.diff", []byte(diff))
	for _, c := range changes {
		if !strings.HasPrefix(c.New, "public.ecr.aws/docker/library/") {
			t.Errorf("%s -> %s: ECR Public path without library/", c.Old, c.New)
		}
	}
	var warned []string
	for _, s := range skips {
		warned = append(warned, s.Ref.Original)
	}
	for _, nonOfficial := range []string{"cimg/node:21.7", "example/app:1.4.2", "hadolint/hadolint:v2.12.0"} {
		if !contains(warned, nonOfficial) {
			t.Errorf("no warning for non-official image %s (warnings: %v)", nonOfficial, warned)
		}
	}
	skipped := skipKeys(skips)
	for _, r := range refscan.Scan([]string{"."}, refscan.Options{}).Refs {
		if r.PullsFromHub() && !skipped[fmt.Sprintf("%s:%d", r.File, r.Line)] {
			t.Errorf("%s:%d: %s still pulls from Docker Hub and was not reported", r.File, r.Line, r.Original)
		}
	}
	if diff2, _, _ := rewriteAll(t, tg); diff2 != "" {
		t.Errorf("second rewrite is not a no-op:\n%s", diff2)
	}
}

func mustGetwd(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

func TestUnifiedDiff(t *testing.T) {
	a := "l1\nl2\nl3\nl4\nl5\nl6\nl7\nl8\nl9\nl10\n"
	b := "l1\nL2\nl3\nl4\nl5\nl6\nl7\nl8\nl9\nL10"
	want := `--- a/f
+++ b/f
@@ -1,5 +1,5 @@
 l1
-l2
+L2
 l3
 l4
 l5
@@ -7,4 +7,4 @@
 l7
 l8
 l9
-l10
+L10
\ No newline at end of file
`
	if got := UnifiedDiff("f", []byte(a), []byte(b)); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if UnifiedDiff("f", []byte(a), []byte(a)) != "" {
		t.Error("diff of equal inputs is not empty")
	}
}

func TestWriteAtomicKeepsMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "Dockerfile")
	if err := os.WriteFile(p, []byte("FROM node\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := WriteAtomic(p, []byte("FROM x/node\n")); err != nil {
		t.Fatal(err)
	}
	info, _ := os.Stat(p)
	if info.Mode().Perm() != 0o640 {
		t.Errorf("mode = %v, want 0640", info.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}

// TestStaleSpanNotApplied: if the file changed since the scan, the span no
// longer matches and nothing is replaced.
func TestStaleSpanNotApplied(t *testing.T) {
	refs, _ := refscan.ScanBytes("Dockerfile", refscan.FormatDockerfile, []byte("FROM node:21\n"), refscan.Options{})
	fr := Plan("Dockerfile", []byte("FROM nginx:1\n"), refs, Target{Server: "c:5000"})
	if fr.Changed() || len(fr.Skips) != 1 {
		t.Errorf("stale span applied: %q, skips %v", fr.New, fr.Skips)
	}
}

func TestWriteAtomicFollowsSymlink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real.yml")
	link := filepath.Join(dir, "link.yml")
	os.WriteFile(real, []byte("a\n"), 0o644)
	if err := os.Symlink("real.yml", link); err != nil {
		t.Skip(err)
	}
	if err := WriteAtomic(link, []byte("b\n")); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Error("symlink replaced by a file")
	}
	if b, _ := os.ReadFile(real); string(b) != "b\n" {
		t.Errorf("target = %q", b)
	}
}

// TestRewriteInPlace covers the references that are rewritten somewhere
// other than where they are used: every case is rewritten once, keeps its
// formatting, and a second rewrite changes nothing.
func TestRewriteInPlace(t *testing.T) {
	tg := Target{Server: "cache.internal:5000"}
	tests := []struct {
		name  string
		files map[string]string
		want  map[string]string // files after the rewrite; others unchanged
		skips int
	}{
		{"kustomize entry without newName, CRLF", map[string]string{
			"k/kustomization.yaml": "resources:\r\n- app.yaml\r\nimages:\r\n- name: nginx   # web\r\n  newTag: \"1.25\"\r\n",
			"k/app.yaml":           "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - image: nginx:1.24\n",
		}, map[string]string{
			"k/kustomization.yaml": "resources:\r\n- app.yaml\r\nimages:\r\n- name: nginx   # web\r\n  newName: cache.internal:5000/docker.io/library/nginx\r\n  newTag: \"1.25\"\r\n",
		}, 0},
		{"kustomize flow-style entry is reported", map[string]string{
			"kustomization.yaml": "resources: [app.yaml]\nimages: [{name: nginx, newTag: \"1.25\"}]\n",
			"app.yaml":           "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - image: nginx:1.24\n",
		}, nil, 1},
		{"ARG default shared by two stages", map[string]string{
			"Dockerfile": "ARG BASE=alpine:3.19\nFROM ${BASE} AS a\nFROM ${BASE}\nCOPY --from=a / /\n",
		}, map[string]string{
			"Dockerfile": "ARG BASE=cache.internal:5000/docker.io/library/alpine:3.19\nFROM ${BASE} AS a\nFROM ${BASE}\nCOPY --from=a / /\n",
		}, 0},
		{"compose services that extend each other", map[string]string{
			"compose.yaml": "services:\n  a:\n    extends: b\n  b:\n    extends: {service: a}\n  c:\n    extends: {file: base.yml, service: web}\n",
			"base.yml":     "services:\n  web:\n    image: 'nginx:1'  # quoted\n",
		}, map[string]string{
			"base.yml": "services:\n  web:\n    image: 'cache.internal:5000/docker.io/library/nginx:1'  # quoted\n",
		}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for name, content := range tt.files {
				p := filepath.Join(dir, name)
				os.MkdirAll(filepath.Dir(p), 0o755)
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			wd := mustGetwd(t)
			t.Cleanup(func() { os.Chdir(wd) })
			os.Chdir(dir)
			_, _, skips := rewriteAll(t, tg)
			if len(skips) != tt.skips {
				t.Errorf("skips = %v, want %d", skips, tt.skips)
			}
			for name, content := range tt.files {
				want, ok := tt.want[name]
				if !ok {
					want = content
				}
				if got, _ := os.ReadFile(name); string(got) != want {
					t.Errorf("%s after rewrite:\n%q\nwant\n%q", name, got, want)
				}
			}
			if diff, _, _ := rewriteAll(t, tg); diff != "" {
				t.Errorf("second rewrite is not a no-op:\n%s", diff)
			}
		})
	}
}

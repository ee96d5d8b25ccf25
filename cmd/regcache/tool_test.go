package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// run executes the root command with args in dir and returns stdout,
// stderr and the error.
func run(t *testing.T, dir string, args ...string) (string, string, error) {
	t.Helper()
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	var out, errOut bytes.Buffer
	root := newRootCmd()
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), errOut.String(), err
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestScanRewriteCLI(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"Dockerfile":                "# base\nFROM node:21.7.0-alpine3.19 AS build\nFROM nginx@sha256:9ae97d36d26566ff84e8893c64a6dc4fe8ca6d1144bf5b87b2b85a32def253c7\n",
		"docker-compose.yml":        "services:\n  db:\n    image: postgres:16  # comment\n",
		"broken/docker-compose.yml": "services:\n\tdb: {}\n",
		"broken/Dockerfile":         "FROM alpine\n\x00\x01binary",
	})
	broken, _ := os.ReadFile(filepath.Join(dir, "broken/docker-compose.yml"))

	out, _, err := run(t, dir, "scan", "--json")
	if err == nil || !strings.Contains(err.Error(), "could not be scanned") {
		t.Errorf("scan with a broken file: err = %v", err)
	}
	var res struct {
		References []struct {
			File, Normalized string
			Dockerhub        bool
		}
		Errors []struct {
			File string
			Line int
		}
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("scan --json: %v\n%s", err, out)
	}
	if len(res.References) != 3 || len(res.Errors) != 2 || res.Errors[0].Line != 2 || res.Errors[1].Line != 2 {
		t.Errorf("scan --json = %+v", res)
	}

	if _, _, err := run(t, dir, "scan", "Dockerfile", "--fail-on", "dockerhub"); err == nil {
		t.Error("--fail-on dockerhub passed with Docker Hub references")
	}

	diff, _, _ := run(t, dir, "rewrite", "--to", "ecr-public", "--dry-run", "Dockerfile")
	if !strings.Contains(diff, "+FROM public.ecr.aws/docker/library/node:21.7.0-alpine3.19 AS build") {
		t.Errorf("dry-run diff:\n%s", diff)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "Dockerfile")); strings.Contains(string(b), "ecr") {
		t.Error("--dry-run wrote the file")
	}

	_, stderr, err := run(t, dir, "rewrite", "--to", "cache.internal:5000")
	if err == nil {
		t.Error("rewrite with a broken file reported success")
	}
	if !strings.Contains(stderr, "broken/docker-compose.yml:2") {
		t.Errorf("broken file not reported with file:line:\n%s", stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "broken/docker-compose.yml")); !bytes.Equal(b, broken) {
		t.Error("broken file modified")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "broken/Dockerfile")); string(b) != "FROM alpine\n\x00\x01binary" {
		t.Error("binary file modified")
	}
	got, _ := os.ReadFile(filepath.Join(dir, "docker-compose.yml"))
	if string(got) != "services:\n  db:\n    image: cache.internal:5000/docker.io/library/postgres:16  # comment\n" {
		t.Errorf("compose after rewrite:\n%s", got)
	}
	os.RemoveAll(filepath.Join(dir, "broken"))
	if _, _, err := run(t, dir, "scan", "--fail-on", "dockerhub"); err != nil {
		t.Errorf("Docker Hub references left after rewrite: %v", err)
	}
	if out, _, _ := run(t, dir, "rewrite", "--to", "cache.internal:5000", "--dry-run"); out != "" {
		t.Errorf("second rewrite is not a no-op:\n%s", out)
	}
}

func TestSetupCLI(t *testing.T) {
	root := t.TempDir()
	daemon := filepath.Join(root, "etc/docker/daemon.json")
	os.MkdirAll(filepath.Dir(daemon), 0o755)
	os.WriteFile(daemon, []byte(`{"data-root": "/mnt/docker", "log-driver": "local"}`), 0o644)
	args := []string{"setup", "docker", "--server", "http://cache.internal:5000", "--write", "--root", root}
	if _, _, err := run(t, root, args...); err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(daemon)
	out, _, err := run(t, root, args...)
	if err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(daemon)
	if !bytes.Equal(first, second) || !strings.Contains(out, "unchanged") {
		t.Errorf("second --write changed the file:\n%s\n%s", first, second)
	}
	if !strings.Contains(string(first), `"data-root": "/mnt/docker"`) {
		t.Errorf("unrelated key lost:\n%s", first)
	}
	if _, _, err := run(t, root, "setup", "circleci", "--server", "http://c:5000", "--write"); err == nil {
		t.Error("--write accepted for a print-only target")
	}
	// Without a target, or with a wrong one, setup lists the targets.
	for _, args := range [][]string{{"setup"}, {"setup", "nope", "--server", "http://c:5000"}} {
		_, _, err := run(t, root, args...)
		if err == nil || !strings.Contains(err.Error(), "github-actions") || !strings.Contains(err.Error(), "codebuild") {
			t.Errorf("%v: err = %v, want the list of targets", args, err)
		}
	}
	if _, _, err := run(t, root, "setup", "docker", "--server", "http://c:5000", "--buildx"); err == nil {
		t.Error("--buildx accepted for docker")
	}
}

// TestSetupCompletion: shell completion offers the targets, with their
// descriptions, and no file names.
func TestSetupCompletion(t *testing.T) {
	out, _, err := run(t, t.TempDir(), "__complete", "setup", "gi")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "github-actions\t") || !strings.HasPrefix(lines[1], "gitlab\t") || lines[2] != ":4" {
		t.Errorf("completion of \"setup gi\":\n%s", out)
	}
	out, _, _ = run(t, t.TempDir(), "__complete", "setup", "")
	for _, name := range []string{"buildkit", "codebuild", "containerd", "docker", "k3s", "kind", "podman"} {
		if !strings.Contains(out, name+"\t") {
			t.Errorf("completion lacks %s:\n%s", name, out)
		}
	}
}

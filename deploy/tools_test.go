package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// requireTool finds a tool that .ci/deps installs, in PATH or in the Go bin
// directory, and fails (never skips) when it is missing.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	var dirs []string
	if gp := os.Getenv("GOPATH"); gp != "" {
		dirs = append(dirs, filepath.Join(gp, "bin"))
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		dirs = append(dirs, filepath.Join(strings.TrimSpace(string(out)), "bin"))
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("%s not found in PATH or the Go bin directory: run ./.ci/deps (as root), which installs it at its pinned version", name)
	return ""
}

// run runs a tool and returns its combined output.
func run(t *testing.T, dir string, argv ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// regcacheBin is the regcache binary, built once for the package's tests.
var regcacheBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "regcache-deploy-test-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "regcache")
	cmd := exec.Command("go", "build", "-o", bin, "../cmd/regcache")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/regcache: %v\n%s", err, out)
	}
	return bin, nil
})

// installRegcache copies the regcache binary into dir.
func installRegcache(t *testing.T, dir string) string {
	t.Helper()
	src, err := regcacheBin()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "regcache")
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bin, err := regcacheBin(); err == nil {
		os.RemoveAll(filepath.Dir(bin))
	}
	os.Exit(code)
}

// Package e2e pulls real container images with real clients (skopeo, crane,
// regctl, podman, containerd's ctr and dockerd) through a regcache binary
// that sits in front of a fake Docker Hub.
//
// The whole test binary runs inside a private network namespace that has
// only a loopback interface, so a client that falls back to the real Docker
// Hub (dockerd does this when a mirror fails) fails loudly instead of
// silently passing and spending real pulls.
package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// envInNetns marks the re-executed test binary: it is already inside the
	// private network namespace.
	envInNetns = "REGCACHE_E2E_IN_NETNS"
	// envRegcacheBin and envBuildLog carry the result of building regcache
	// (done outside the namespace, where the Go toolchain may still reach
	// its module proxy) into the re-executed binary.
	envRegcacheBin = "REGCACHE_E2E_BIN"
	envBuildLog    = "REGCACHE_E2E_BUILD_LOG"
)

// regcacheBuild is the regcache binary built once for the whole run, or the
// reason it could not be built. Tests that need it fail with that reason;
// tests that don't still run.
var regcacheBuild struct {
	bin string
	err error
}

func TestMain(m *testing.M) {
	if os.Getenv(envInNetns) == "" {
		os.Exit(reexecInNetns())
	}
	regcacheBuild.bin = os.Getenv(envRegcacheBin)
	if regcacheBuild.bin == "" {
		msg := "regcache was not built"
		if p := os.Getenv(envBuildLog); p != "" {
			if b, err := os.ReadFile(p); err == nil {
				msg = "go build ./cmd/regcache failed:\n" + string(b)
			}
		}
		regcacheBuild.err = errors.New(msg)
	}
	os.Exit(m.Run())
}

// reexecInNetns builds regcache, then runs this same test binary with the same
// arguments under `unshare -n`, and returns its exit code.
func reexecInNetns() int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cannot find the test binary:", err)
		return 1
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: `unshare` not found (install util-linux); the e2e tests must run in a private network namespace and are never skipped")
		return 1
	}
	if _, err := exec.LookPath("ip"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL: `ip` not found (install iproute2); it brings up loopback in the private network namespace")
		return 1
	}
	// Probe first so the failure says exactly what is missing rather than
	// surfacing as a confusing test failure.
	if out, err := exec.Command("unshare", "-n", "--", "true").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: cannot create a network namespace (`unshare -n true`: %v: %s).\n"+
			"The e2e tests need root or CAP_SYS_ADMIN (a CI container needs --privileged or --cap-add SYS_ADMIN); they are never skipped.\n",
			err, strings.TrimSpace(string(out)))
		return 1
	}

	tmp, err := os.MkdirTemp("", "regcache-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	env := append(os.Environ(), envInNetns+"=1")
	bin, buildLog := buildRegcache(tmp)
	if bin != "" {
		env = append(env, envRegcacheBin+"="+bin)
	} else {
		env = append(env, envBuildLog+"="+buildLog)
	}

	args := append([]string{"-n", "--", "sh", "-c", `ip link set lo up && exec "$@"`, "sh", self}, os.Args[1:]...)
	cmd := exec.Command("unshare", args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = env
	// If `go test` kills us (its own timeout), take the namespace with us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "e2e: running the tests in the network namespace:", err)
		return 1
	}
	return 0
}

// buildRegcache runs `go build ./cmd/regcache` from the module root. It
// returns the binary's path, or "" and the path of the build output.
func buildRegcache(dir string) (bin, logPath string) {
	logPath = filepath.Join(dir, "build.log")
	fail := func(msg string) (string, string) {
		_ = os.WriteFile(logPath, []byte(msg), 0o644)
		return "", logPath
	}
	root, err := moduleRoot()
	if err != nil {
		return fail(err.Error())
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin = filepath.Join(dir, "regcache")
	cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/regcache")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fail(fmt.Sprintf("%v\n%s", err, out))
	}
	return bin, ""
}

// recordBuildInputs stats every file of the module. regcache is built at
// run time, not imported, so without this `go test` would replay a cached
// PASS after the server's code changed: the test cache keys on the files a
// test touched (recorded only while tests run, hence called from tests),
// and now those include the server's sources.
func recordBuildInputs() {
	root, err := moduleRoot()
	if err != nil {
		return
	}
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			if n := d.Name(); p != root && (n == ".git" || n == "regcache-data" || strings.HasPrefix(n, ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		_, _ = os.Stat(p)
		return nil
	})
}

// moduleRoot walks up from the package directory (go test's working
// directory) to the directory holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// TestNetworkIsPrivate guards the guard: inside the namespace the only
// interface is loopback and the public internet is unreachable, so no
// client can quietly fall back to the real Docker Hub.
func TestNetworkIsPrivate(t *testing.T) {
	ifaces, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifaces {
		if i.Flags&net.FlagLoopback == 0 {
			t.Errorf("non-loopback interface %q in the test network namespace", i.Name)
		}
	}
	// 198.51.100.1 is TEST-NET-2: never a real host, but routable on a
	// normal machine; here there is no route at all.
	if c, err := net.DialTimeout("tcp", "198.51.100.1:443", 2*time.Second); err == nil {
		c.Close()
		t.Error("dialled an outside address from inside the test network namespace")
	}
}

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
	"regexp"
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
	// The same for the OCI conformance suite's test binary.
	envConformanceBin      = "REGCACHE_E2E_CONFORMANCE_BIN"
	envConformanceBuildLog = "REGCACHE_E2E_CONFORMANCE_BUILD_LOG"
	// envConformanceDir overrides where the suite's source is; by default
	// ../shared/conformance from the module root, where CI has it.
	envConformanceDir = "REGCACHE_CONFORMANCE_DIR"
)

// built is a binary built once for the whole run, or the reason it could
// not be built. Tests that need it fail with that reason; tests that don't
// still run.
type built struct {
	bin string
	err error
}

var (
	regcacheBuild    built
	conformanceBuild built
)

func TestMain(m *testing.M) {
	if os.Getenv(envInNetns) == "" {
		os.Exit(reexecInNetns())
	}
	regcacheBuild = builtFromEnv(envRegcacheBin, envBuildLog, "go build ./cmd/regcache")
	conformanceBuild = builtFromEnv(envConformanceBin, envConformanceBuildLog, "building the OCI conformance suite")
	os.Exit(m.Run())
}

// builtFromEnv reads what reexecInNetns passed on about one build.
func builtFromEnv(binEnv, logEnv, what string) built {
	if bin := os.Getenv(binEnv); bin != "" {
		return built{bin: bin}
	}
	msg := what + " did not run"
	if p := os.Getenv(logEnv); p != "" {
		if b, err := os.ReadFile(p); err == nil {
			msg = what + " failed:\n" + string(b)
		}
	}
	return built{err: errors.New(msg)}
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
	env = append(env, buildEnv(envRegcacheBin, bin, envBuildLog, buildLog))
	// The suite takes a while to build and only one test runs it.
	if runSelects("TestConformance") {
		bin, buildLog = buildConformance(tmp)
		env = append(env, buildEnv(envConformanceBin, bin, envConformanceBuildLog, buildLog))
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

// buildEnv is the variable that tells the re-executed binary about a build:
// the binary, or the build output when there is none.
func buildEnv(binEnv, bin, logEnv, logPath string) string {
	if bin != "" {
		return binEnv + "=" + bin
	}
	return logEnv + "=" + logPath
}

// runSelects says whether the -test.run pattern, if any, can select the
// top-level test name.
func runSelects(name string) bool {
	for i, a := range os.Args[1:] {
		var pat string
		switch {
		case strings.HasPrefix(a, "-test.run="):
			pat = strings.TrimPrefix(a, "-test.run=")
		case a == "-test.run" && i+2 < len(os.Args):
			pat = os.Args[i+2]
		default:
			continue
		}
		top, _, _ := strings.Cut(pat, "/")
		re, err := regexp.Compile(top)
		return err != nil || re.MatchString(name)
	}
	return true
}

// buildRegcache runs `go build ./cmd/regcache` from the module root. It
// returns the binary's path, or "" and the path of the build output.
func buildRegcache(dir string) (bin, logPath string) {
	root, err := moduleRoot()
	if err != nil {
		return buildFailed(filepath.Join(dir, "regcache"), err.Error())
	}
	bin = filepath.Join(dir, "regcache")
	return goBuild(root, bin, "build", "-o", bin, "./cmd/regcache")
}

// buildConformance compiles the OCI distribution-spec conformance suite
// (a copy of its conformance/ directory, which is its own Go module) into a
// test binary. Its source is read-only in CI, hence -o into dir.
func buildConformance(dir string) (bin, logPath string) {
	bin = filepath.Join(dir, "conformance.test")
	src := os.Getenv(envConformanceDir)
	if src == "" {
		root, err := moduleRoot()
		if err != nil {
			return buildFailed(bin, err.Error())
		}
		src = filepath.Join(root, "..", "shared", "conformance")
	}
	if _, err := os.Stat(filepath.Join(src, "01_pull_test.go")); err != nil {
		return buildFailed(bin, fmt.Sprintf("the OCI conformance suite v1.1.1 is not at %s (%v): "+
			"CI has it in shared/conformance next to the repository; elsewhere set $%s to a copy of "+
			"opencontainers/distribution-spec's conformance/ directory", src, err, envConformanceDir))
	}
	return goBuild(src, bin, "test", "-c", "-o", bin, ".")
}

// goBuild runs the go command in srcDir to build bin. It returns bin, or ""
// and the path of the build output.
func goBuild(srcDir, bin string, args ...string) (string, string) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goBin, args...)
	cmd.Dir = srcDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return buildFailed(bin, fmt.Sprintf("go %s (in %s): %v\n%s", strings.Join(args, " "), srcDir, err, out))
	}
	return bin, ""
}

// buildFailed writes why bin could not be built next to where it would be.
func buildFailed(bin, msg string) (string, string) {
	logPath := bin + ".build.log"
	_ = os.WriteFile(logPath, []byte(msg), 0o644)
	return "", logPath
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

// Package systems starts the caches the benchmarks compare, on loopback:
// regcache in process, and CNCF Distribution v3 in proxy mode as a process.
package systems

import (
	"log/slog"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"

	"github.com/regcache/regcache/internal/app"
	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/testhub"
)

// StartDistribution runs the registry binary testhub would use
// (Distribution v3.1.2 from `go install`) as a pull-through cache of remote,
// anonymous (no proxy username/password: it fetches anonymous tokens from
// the realm the origin challenges with); it stops with the test.
func StartDistribution(t testing.TB, remote string) *testhub.Registry {
	t.Helper()
	bin, err := testhub.FindRegistryBinary()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "--version").CombinedOutput(); err != nil || !strings.Contains(string(out), "v3.") {
		t.Fatalf("%s is not Distribution v3 (%v): %s; install it with `go install github.com/distribution/distribution/v3/cmd/registry@v3.1.2`", bin, err, out)
	}
	return testhub.StartProxy(t, remote)
}

// DistributionName names the Distribution StartDistribution runs, with its
// version, for reports.
func DistributionName() string {
	bin, err := testhub.FindRegistryBinary()
	if err != nil {
		return "Distribution proxy"
	}
	out, _ := exec.Command(bin, "--version").Output()
	for _, x := range strings.Fields(string(out)) {
		if strings.HasPrefix(x, "v3.") {
			return "Distribution " + x + " proxy"
		}
	}
	return "Distribution proxy"
}

// Regcache is regcache running in process.
type Regcache struct {
	URL  string
	App  *app.App
	Logs *testhub.TailBuffer // info and above
}

// StartRegcache runs regcache with the configuration yaml (what names it in
// errors) on an httptest server, whatever its listen says; it stops with
// the test.
func StartRegcache(t testing.TB, yaml, what string) *Regcache {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), what)
	if err != nil {
		t.Fatal(err)
	}
	logs := testhub.NewTailBuffer(0)
	a, err := app.New(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler)
	t.Cleanup(srv.Close)
	return &Regcache{URL: srv.URL, App: a, Logs: logs}
}

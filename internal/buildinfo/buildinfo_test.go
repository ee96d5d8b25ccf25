package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestFromBuild(t *testing.T) {
	vcs := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/regcache/regcache", Version: "(devel)"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.modified", Value: "true"},
			{Key: "GOOS", Value: "linux"}, {Key: "GOARCH", Value: "arm64"}}}
	installed := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"}}
	for _, tc := range []struct {
		name          string
		bi            *debug.BuildInfo
		ldV, ldC, ldD string
		want          Info
		wantString    string
	}{
		{"no build info", nil, "", "", "", Info{Version: "(devel)"}, "regcache (devel)"},
		{"go build in a checkout", vcs, "", "", "", Info{Version: "(devel)", Commit: "0123456789abcdef0123", Dirty: true, GoVersion: "go1.26.8", Platform: "linux/arm64"},
			"regcache (devel) (commit 0123456789ab, dirty) go1.26.8 linux/arm64"},
		{"go install @version", installed, "", "", "", Info{Version: "v1.4.0", GoVersion: "go1.26.8"}, "regcache v1.4.0 go1.26.8"},
		// The stamp wins, including a clean flag over a dirty VCS reading.
		{"stamped by the linker", vcs, "v1.5.0-rc.1", "fedcba", "false", Info{Version: "v1.5.0-rc.1", Commit: "fedcba", GoVersion: "go1.26.8", Platform: "linux/arm64"},
			"regcache v1.5.0-rc.1 (commit fedcba) go1.26.8 linux/arm64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromBuild(tc.bi, tc.ldV, tc.ldC, tc.ldD)
			if got != tc.want {
				t.Errorf("fromBuild = %+v, want %+v", got, tc.want)
			}
			if s := got.String(); s != tc.wantString {
				t.Errorf("String() = %q, want %q", s, tc.wantString)
			}
		})
	}
}

func TestCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(Collector(Info{Version: "v1.0.0", Commit: "abc", GoVersion: "go1.26.8"}))
	want := `# HELP regcache_build_info Always 1; the labels say which build of regcache is running.
# TYPE regcache_build_info gauge
regcache_build_info{dirty="false",goversion="go1.26.8",revision="abc",version="v1.0.0"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// The test binary itself has build information; Read must not panic and
// must name the Go version.
func TestReadRunningBinary(t *testing.T) {
	if i := Read(); i.GoVersion == "" || i.Version == "" {
		t.Errorf("Read() = %+v", i)
	}
}

// Package buildinfo tells which build of regcache is running: its version,
// the commit it was built from, whether the tree had uncommitted changes, and
// the Go version, for `regcache version` and the regcache_build_info metric.
//
// The figures come from the linker first (the image build and `make build`
// stamp them with -X, which works with -buildvcs=false and in trees without
// .git) and from debug.ReadBuildInfo otherwise (`go install ...@vX` records
// the module version, a build in a git checkout the vcs.* settings).
package buildinfo

import (
	"fmt"
	"runtime/debug"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Set by the linker: -X github.com/regcache/regcache/internal/buildinfo.version=v1.2.3
// (and .commit, .dirty=true|false). They are package variables only because
// -X can set nothing else; nothing writes them at run time.
var (
	version string
	commit  string
	dirty   string
)

// Info describes one build.
type Info struct {
	Version   string `json:"version"`  // v1.2.3, or "(devel)" for an unstamped local build
	Commit    string `json:"commit"`   // full VCS revision, "" when unknown
	Dirty     bool   `json:"dirty"`    // built from a tree with uncommitted changes
	GoVersion string `json:"go"`       // go1.26.8
	Platform  string `json:"platform"` // linux/amd64
}

// Read returns the running binary's build information.
func Read() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuild(bi, version, commit, dirty)
}

// fromBuild merges the linker-stamped values over what the Go toolchain
// recorded; bi may be nil (a binary built without module support).
func fromBuild(bi *debug.BuildInfo, ldVersion, ldCommit, ldDirty string) Info {
	info := Info{Version: "(devel)"}
	if bi != nil {
		info.GoVersion = bi.GoVersion
		if v := bi.Main.Version; v != "" {
			info.Version = v
		}
		var goos, goarch string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Commit = s.Value
			case "vcs.modified":
				info.Dirty = s.Value == "true"
			case "GOOS":
				goos = s.Value
			case "GOARCH":
				goarch = s.Value
			}
		}
		if goos != "" && goarch != "" {
			info.Platform = goos + "/" + goarch
		}
	}
	if ldVersion != "" {
		info.Version = ldVersion
	}
	if ldCommit != "" {
		info.Commit = ldCommit
	}
	if d, err := strconv.ParseBool(ldDirty); err == nil {
		info.Dirty = d
	}
	return info
}

// String is the one line `regcache version` prints.
func (i Info) String() string {
	s := "regcache " + i.Version
	if i.Commit != "" {
		c := i.Commit
		if len(c) > 12 {
			c = c[:12]
		}
		s += " (commit " + c
		if i.Dirty {
			s += ", dirty"
		}
		s += ")"
	}
	if i.GoVersion != "" {
		s += " " + i.GoVersion
	}
	if i.Platform != "" {
		s += " " + i.Platform
	}
	return s
}

// Collector exports regcache_build_info{version,revision,dirty,goversion} 1,
// the usual way to put a build's identity on a dashboard and to join it to
// other series.
func Collector(i Info) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "regcache_build_info",
		Help:        "Always 1; the labels say which build of regcache is running.",
		ConstLabels: prometheus.Labels{"version": i.Version, "revision": i.Commit, "dirty": fmt.Sprint(i.Dirty), "goversion": i.GoVersion},
	}, func() float64 { return 1 })
}

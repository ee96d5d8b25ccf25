package e2e

import (
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// TestClientsPullDirect is the control for TestClientsPullThroughRegcache:
// the same clients, daemons and images, with a plain registry as the
// "mirror". When a client fails here, the harness or the machine is at
// fault, not regcache.
func TestClientsPullDirect(t *testing.T) {
	w := newWorld(t)
	reg := testhub.StartRegistry(t)
	images := seedImages(t, reg)
	// Host-in-path clients (skopeo, crane, regctl, podman) ask for
	// docker.io/library/...; dockerd and ctr ask for library/....
	crane := requireBinary(t, "crane", "crane")
	for _, img := range images {
		w.mustRun(t, time.Minute, w.baseEnv(), crane, "copy", "--insecure",
			reg.Host+"/"+img.repo+":"+img.tag, reg.Host+"/docker.io/"+img.repo+":"+img.tag)
	}
	pullWithEveryClient(t, w, reg.Host, false, images)
}

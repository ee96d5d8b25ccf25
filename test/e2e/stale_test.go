package e2e

import (
	"path/filepath"
	"testing"

	"github.com/regcache/regcache/internal/testhub"
)

// TestClientsPullFromCacheWhenHubFails is the product's promise seen by
// real clients: once an image is cached, every client can still pull it
// while Docker Hub answers 429 or cannot be reached. tag_ttl is 0s, so
// every tag pull makes regcache revalidate upstream and fail over to its
// cache. It also shows that each client's own Accept header and request
// pattern (dockerd HEAD then GET by digest, containerd HEAD with ?ns=, ...)
// is answered from a cache another client (crane) filled.
func TestClientsPullFromCacheWhenHubFails(t *testing.T) {
	w := newWorld(t)
	images, hub, rc := startHubAndRegcache(t, w, testhub.Options{}, "0s")

	// Warm the cache with every platform of every image.
	crane := requireBinary(t, "crane", "crane")
	for _, img := range images {
		w.mustRun(t, pullTimeout, w.baseEnv(), crane, "pull", "--insecure", "--format", "oci",
			rc.host()+"/docker.io/"+img.repo+":"+img.tag, filepath.Join(w.mkdir("warm"), img.name))
	}

	for _, tc := range []struct {
		name  string
		fault testhub.Fault
	}{
		{"hub-429", testhub.Fault429},
		{"hub-unreachable", testhub.FaultDrop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Fresh clients with empty local image stores, in a sandbox of
			// their own whose logs are scanned too.
			cw := newWorld(t)
			cw.addSecret(rc.cfg.user, rc.cfg.password)
			// A restart forgets the previous subtest's Retry-After pause
			// and open breakers (they live in memory), so this fault is
			// met by real requests; the cache on disk is all that stays.
			rc.restart(t)
			hub.SetFault(tc.fault)
			before := hub.Counts()
			// Cleanups run after the parallel client subtests finish.
			t.Cleanup(func() {
				hub.SetFault(testhub.FaultNone)
				refused := hub.Counts().Faults - before.Faults
				t.Logf("during %s the hub refused %d requests", tc.name, refused)
				if refused == 0 {
					t.Errorf("regcache never asked the hub during %s; the fault was not exercised", tc.name)
				}
			})
			pullWithEveryClient(t, cw, rc.host(), true, images)
		})
	}
}

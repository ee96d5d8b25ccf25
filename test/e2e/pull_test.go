package e2e

import (
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// seedImages pushes the images every client pulls: a multi-arch index in
// both index formats and a single-platform image in both manifest formats.
// The names are Docker Hub official-image names so that dockerd can pull the
// bare name ("alpine") and podman/ctr the docker.io name.
func seedImages(t *testing.T, reg *testhub.Registry) []testImage {
	t.Helper()
	platforms := []string{"linux/amd64", "linux/arm64"}
	alpine := reg.PushIndex(t, "library/alpine", "latest", platforms, false)
	redis := reg.PushIndex(t, "library/redis", "7", platforms, true)
	busybox := reg.PushImage(t, "library/busybox", "1.36", testhub.ImageOptions{Layers: 2})
	nginx := reg.PushImage(t, "library/nginx", "1.27", testhub.ImageOptions{Layers: 2, OCI: true})
	return []testImage{
		{name: "docker-manifest-list", repo: alpine.Repo, tag: alpine.Tag, want: alpine.Digest.String()},
		{name: "oci-index", repo: redis.Repo, tag: redis.Tag, want: redis.Digest.String()},
		{name: "docker-v2-single", repo: busybox.Repo, tag: busybox.Tag, want: busybox.Digest.String()},
		{name: "oci-single", repo: nginx.Repo, tag: nginx.Tag, want: nginx.Digest.String()},
	}
}

// startHubAndRegcache seeds the test images on a fake Docker Hub that
// requires ci-user with a random password (opts.Users is replaced), and
// starts regcache in front of it with those credentials and tagTTL ("" for
// the default).
func startHubAndRegcache(t *testing.T, w *world, opts testhub.Options, tagTTL string) ([]testImage, *testhub.Hub, *regcache) {
	t.Helper()
	return startHubAndRegcacheWith(t, w, opts, regcacheConfig{tagTTL: tagTTL})
}

// startHubAndRegcacheWith is startHubAndRegcache with more of regcache's
// config (TLS, client_auth); the upstream and its login are filled in.
func startHubAndRegcacheWith(t *testing.T, w *world, opts testhub.Options, cfg regcacheConfig) ([]testImage, *testhub.Hub, *regcache) {
	t.Helper()
	reg := testhub.StartRegistry(t)
	images := seedImages(t, reg)
	secret := randomSecret(t)
	opts.Users = map[string]string{"ci-user": secret}
	hub := testhub.NewHub(t, reg, opts)
	cfg.upstreamURL, cfg.user, cfg.password = hub.URL, "ci-user", secret
	return images, hub, startRegcache(t, w, cfg)
}

// pullWithEveryClient runs every real client against mirror, in parallel as
// a CI fleet would, and checks that each reports the upstream's digest for
// every image and reached the mirror by its own routing mode. Each client
// talks to mirror through its own recording proxy.
//
// mirrorIsRegcache enables the checks that only regcache, not a plain
// registry, satisfies.
func pullWithEveryClient(t *testing.T, w *world, mirror string, mirrorIsRegcache bool, images []testImage, checks ...func(t *testing.T, reqs []recordedRequest)) {
	pullWithClients(t, w, realClients(), mirror, mirrorIsRegcache, images, checks...)
}

// pullWithClients is pullWithEveryClient for the given clients. Each check
// is run, after the route check, on the requests each client sent.
func pullWithClients(t *testing.T, w *world, clients []realClient, mirror string, mirrorIsRegcache bool, images []testImage, checks ...func(t *testing.T, reqs []recordedRequest)) {
	for _, c := range clients {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			rec := startRecorder(t, w, c.name, mirror)
			pull := c.setup(t, w, rec.host)
			deadline := time.Now().Add(clientBudget)
			for _, img := range images {
				t.Run(img.name, func(t *testing.T) {
					if time.Now().After(deadline) {
						t.Fatalf("%s used up its %s budget on earlier images", c.name, clientBudget)
					}
					if got := pull(t, img); got != img.want {
						t.Errorf("%s pulled docker.io/%s:%s with digest %q, upstream has %s", c.name, img.repo, img.tag, got, img.want)
					}
				})
			}
			checkRoute(t, rec.requests(), c.route, mirrorIsRegcache)
			for _, check := range checks {
				check(t, rec.requests())
			}
		})
	}
}

// TestClientsPullThroughRegcache is acceptance item 1: every real client
// pulls through regcache from a credentialed fake Docker Hub and gets the
// upstream's digests. The hub redirects blob GETs to a CDN host, as Docker
// Hub does.
func TestClientsPullThroughRegcache(t *testing.T) {
	w := newWorld(t)
	images, hub, rc := startHubAndRegcache(t, w, testhub.Options{BlobRedirect: true}, "")
	t.Cleanup(func() {
		// Runs after every client subtest. Credentials sent to the CDN
		// host would be a leak of the hub credentials too.
		c := hub.Counts()
		t.Logf("hub saw %d manifest GETs, %d HEADs, %d token requests, %d CDN requests", c.ManifestGETs, c.ManifestHEADs, c.TokenRequests, c.CDNRequests)
		if c.CDNAuthHeaders != 0 {
			t.Errorf("regcache sent an Authorization header to the blob redirect host %d times", c.CDNAuthHeaders)
		}
	})
	pullWithEveryClient(t, w, rc.host(), true, images)
}

package adversarial

import (
	"encoding/json"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// An upstream that answers one blob with a 429 and a Retry-After of a day
// (issue 13, item 13) once paused the whole registry for that day. Now it
// holds back blob fetches from that source for max_retry_after at most,
// manifest revalidation (which keeps tags fresh) goes on, and the status
// page says what is paused and until when.
func TestBlob429PausesOnlyBlobs(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	img := h.Backend.PushImage(t, "team/app", "v1", testhub.ImageOptions{Layers: 2})
	h.Backend.PushImage(t, "team/app", "v2", testhub.ImageOptions{})
	limited := "/v2/team/app/blobs/" + img.Layers[0].String()
	h.on("GET", limited, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "86400")
		ociError(w, http.StatusTooManyRequests, "TOOMANYREQUESTS", "slow down")
	})
	const maxPause = 4 * time.Second
	rc := startRegcache(t, registryConfig(h.URL, "")+"max_retry_after: 4s\ntag_ttl: 1s\nrevalidate_wait: 10s\n")
	base := rc.URL + "/v2/hostile.example/team/app/"
	accept := http.Header{"Accept": {acceptManifests}}

	if resp, body := call(t, rc.Client, "GET", base+"manifests/v1", accept); resp.StatusCode != 200 {
		t.Fatalf("manifest: %d %s", resp.StatusCode, body)
	}
	pausedAt := time.Now()
	resp, body := call(t, rc.Client, "GET", base+"blobs/"+img.Layers[0].String(), nil)
	ociErrorBody(t, "the limited blob", resp, body, http.StatusTooManyRequests)
	checkRetryAfter := func(what string, resp *http.Response) {
		t.Helper()
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 || time.Duration(s)*time.Second > maxPause {
			t.Errorf("%s: Retry-After %q, want 1 to %v", what, resp.Header.Get("Retry-After"), maxPause)
		}
	}
	checkRetryAfter("the limited blob", resp)

	// Another blob from the same source is not asked for meanwhile.
	other := img.Layers[1].String()
	resp, body = call(t, rc.Client, "GET", base+"blobs/"+other, nil)
	ociErrorBody(t, "another blob during the pause", resp, body, http.StatusTooManyRequests)
	checkRetryAfter("another blob during the pause", resp)
	if n := h.count("GET /v2/team/app/blobs/"+other) + h.count("HEAD /v2/team/app/blobs/"+other); n != 0 {
		t.Errorf("another blob was asked for %d times during the pause", n)
	}

	// The status page shows the pause and its end; manifests are not paused.
	resp, body = call(t, rc.Client, "GET", rc.URL+"/_regcache/status", nil)
	var st struct {
		Registries []struct {
			Name   string
			Pauses []struct {
				Class string
				Until time.Time
			}
		}
	}
	if err := json.Unmarshal(body, &st); err != nil || len(st.Registries) != 1 {
		t.Fatalf("status: %d %v %s", resp.StatusCode, err, body)
	}
	var blobsUntil time.Time
	for _, p := range st.Registries[0].Pauses {
		switch p.Class {
		case "blobs":
			blobsUntil = p.Until
		default:
			t.Errorf("the status page shows a pause of %s", p.Class)
		}
	}
	if blobsUntil.Before(pausedAt) || blobsUntil.After(pausedAt.Add(maxPause+2*time.Second)) {
		t.Errorf("the status page says blobs are paused until %v; the pause began at %v and may last %v", blobsUntil, pausedAt, maxPause)
	}
	if v := rc.metric(`regcache_upstream_paused_until_seconds{class="blobs",registry="hostile.example"}`); int64(v) != blobsUntil.Unix() {
		t.Errorf("regcache_upstream_paused_until_seconds says %v, the status page %v", v, blobsUntil.Unix())
	}

	// Tags stay fresh: past tag_ttl the cached tag is revalidated at the
	// origin, and a new tag is fetched.
	time.Sleep(1100 * time.Millisecond)
	heads := h.count("HEAD /v2/team/app/manifests/v1")
	resp, body = call(t, rc.Client, "GET", base+"manifests/v1", accept)
	if resp.StatusCode != 200 || resp.Header.Get("X-Regcache") == "stale" || h.count("HEAD /v2/team/app/manifests/v1") == heads {
		t.Errorf("revalidating a tag during the blob pause: %d %q, HEADs %d then %d", resp.StatusCode, resp.Header.Get("X-Regcache"), heads, h.count("HEAD /v2/team/app/manifests/v1"))
	}
	if resp, body = call(t, rc.Client, "GET", base+"manifests/v2", accept); resp.StatusCode != 200 {
		t.Errorf("a new tag during the blob pause: %d %s", resp.StatusCode, body)
	}

	// When the pause ends (max_retry_after, not the day asked for), blobs
	// are fetched again.
	h.reset()
	time.Sleep(time.Until(blobsUntil.Add(200 * time.Millisecond)))
	if err := pull(rc.Client, rc.URL, "hostile.example/team/app", "v1", accept); err != nil {
		t.Errorf("after the pause: %v", err)
	}
}

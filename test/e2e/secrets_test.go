package e2e

import (
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// TestSecretsStayOutOfLogsOnAuthFailure covers acceptance item 8 on the
// path most likely to leak: the upstream rejects regcache's credentials,
// so regcache logs and returns errors about authentication. Every test's
// logs (regcache at debug level, /metrics, daemons, client output) are
// scanned for the password and its Basic encoding by newWorld's cleanup;
// here the scan also covers the error paths.
func TestSecretsStayOutOfLogsOnAuthFailure(t *testing.T) {
	for _, tc := range []struct {
		name         string
		passwordFile bool
	}{
		{"password_env", false},
		{"password_file", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			reg := testhub.StartRegistry(t)
			img := reg.PushImage(t, "library/busybox", "1.36", testhub.ImageOptions{})
			hub := testhub.NewHub(t, reg, testhub.Options{Users: map[string]string{"ci-user": randomSecret(t)}})
			// regcache holds a wrong password: every upstream request fails
			// authentication.
			rc := startRegcache(t, w, regcacheConfig{
				upstreamURL:  hub.URL,
				user:         "ci-user",
				password:     randomSecret(t),
				passwordFile: tc.passwordFile,
			})
			crane := requireBinary(t, "crane", "crane")
			ref := rc.host() + "/docker.io/" + img.Repo + ":" + img.Tag
			if out, err := w.run(t.Context(), time.Minute, w.baseEnv(), crane, "pull", "--insecure", ref, w.dir+"/out.tar"); err == nil {
				t.Errorf("pull with a wrong upstream password succeeded:\n%s", out)
			}
			// Once more by digest and through the bare dockerd-style path,
			// so more error paths are logged.
			_, _ = w.run(t.Context(), time.Minute, w.baseEnv(), crane, "manifest", "--insecure", rc.host()+"/docker.io/"+img.Repo+"@"+img.Digest.String())
			_, _ = w.run(t.Context(), time.Minute, w.baseEnv(), crane, "manifest", "--insecure", rc.host()+"/library/busybox:1.36")
		})
	}
}

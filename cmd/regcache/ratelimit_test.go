package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/regcache/regcache/internal/app"
	"github.com/regcache/regcache/internal/ratelimit"
	"github.com/regcache/regcache/internal/testhub"
)

// regcache ratelimit --json reports exactly what the fake hub sent, for the
// anonymous budget and for an account's.
func TestRatelimitCommand(t *testing.T) {
	backend := testhub.StartRegistry(t)
	backend.PushImage(t, "ratelimitpreview/test", "latest", testhub.ImageOptions{})
	hub := testhub.NewHub(t, backend, testhub.Options{
		Users: map[string]string{"ci-user": "hub-secret"}, AnonymousLimit: 100, UserLimit: 200,
	})
	// Spend some of each budget so "remaining" differs from the limit.
	ref, err := name.ParseReference(hub.Host+"/ratelimitpreview/test:latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := remote.Get(ref); err != nil {
			t.Fatal(err)
		}
		if _, err := remote.Get(ref, remote.WithAuth(authn.FromConfig(authn.AuthConfig{Username: "ci-user", Password: "hub-secret"}))); err != nil {
			t.Fatal(err)
		}
	}
	hub.ResetCounts()
	tests := []struct {
		name     string
		args     []string
		stdin    string
		env      map[string]string
		identity string
		limit    int
	}{
		{"anonymous", []string{"--anonymous"}, "", nil, "anonymous", 100},
		{"password-stdin", []string{"--username", "ci-user", "--password-stdin"}, "hub-secret\n", nil, "ci-user", 200},
		{"environment", nil, "", map[string]string{"DOCKERHUB_USERNAME": "ci-user", "DOCKERHUB_PASSWORD": "hub-secret"}, "ci-user", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("DOCKER_CONFIG", t.TempDir())
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			out, err := runCmd(t, tc.stdin, append([]string{"ratelimit", "--url", hub.URL, "--json"}, tc.args...)...)
			if err != nil {
				t.Fatalf("ratelimit: %v\n%s", err, out)
			}
			var rep ratelimit.Report
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("not JSON: %q", out)
			}
			id := tc.identity
			if id == "anonymous" {
				id = ""
			}
			want := hub.Remaining(id)
			if !rep.Limited || rep.Limit != tc.limit || rep.Remaining != want || rep.Remaining != tc.limit-3 || rep.Identity != tc.identity || rep.WindowSeconds != 21600 {
				t.Fatalf("report %+v, want limit %d remaining %d identity %s", rep, tc.limit, want, tc.identity)
			}
			if strings.Contains(out, "hub-secret") {
				t.Fatal("the password was printed")
			}
		})
	}
	// HEADs are free: checking did not spend any pulls.
	if c := hub.Counts(); c.ManifestGETs != 0 {
		t.Fatalf("the check spent %d pulls", c.ManifestGETs)
	}

	t.Run("wrong password", func(t *testing.T) {
		out, err := runCmd(t, "nope\n", "ratelimit", "--url", hub.URL, "--username", "ci-user", "--password-stdin")
		if err == nil || strings.Contains(out+err.Error(), "nope") {
			t.Fatalf("err = %v, out = %q", err, out)
		}
	})
	t.Run("no headers is no limit", func(t *testing.T) {
		open := testhub.NewHub(t, backend, testhub.Options{})
		out, err := runCmd(t, "", "ratelimit", "--url", open.URL, "--anonymous")
		if err != nil || !strings.Contains(out, "no limit") {
			t.Fatalf("out %q err %v", out, err)
		}
	})
}

func runCmd(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

// regcache status shows what a running server learned from its upstreams'
// headers, without spending a pull.
func TestStatusCommand(t *testing.T) {
	backend := testhub.StartRegistry(t)
	backend.PushImage(t, "library/alpine", "3.19", testhub.ImageOptions{})
	hub := testhub.NewHub(t, backend, testhub.Options{AnonymousLimit: 100})
	mirror := testhub.NewHub(t, backend, testhub.Options{RepoPrefix: "docker/"})
	_, srv := startApp(t, fmt.Sprintf("storage: {root: %s}\nregistries:\n  docker.io:\n    url: %s\n    reserve: 5\n    mirrors: [{url: %s, repo_prefix: docker/, repositories: [\"library/*\"]}]\n",
		t.TempDir(), hub.URL, mirror.URL))
	resp, err := http.Get(srv.URL + "/v2/library/alpine/manifests/3.19")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("pull: %v %v", err, resp)
	}
	resp.Body.Close()
	hub.ResetCounts()

	out, err := runCmd(t, "", "status", "--server", srv.URL, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st app.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Registries) != 1 {
		t.Fatalf("status JSON: %v %q", err, out)
	}
	b := st.Registries[0].Budget
	if !b.Limited || b.Limit != 100 || b.Remaining != hub.Remaining("") || b.WindowSeconds != 21600 {
		t.Fatalf("budget %+v, hub remaining %d", b, hub.Remaining(""))
	}
	if srcs := st.Registries[0].Sources; len(srcs) != 2 || srcs[1].Name != "origin" || srcs[0].State != "closed" {
		t.Fatalf("sources %+v", srcs)
	}
	out, err = runCmd(t, "", "status", "--server", srv.URL)
	if err != nil || !strings.Contains(out, "docker.io") || !strings.Contains(out, "origin") || !strings.Contains(out, fmt.Sprint(hub.Remaining(""))) {
		t.Fatalf("table: %v\n%s", err, out)
	}
	if hub.Counts().Requests != 0 {
		t.Fatal("status made upstream requests")
	}
	// The same figures as gauges.
	resp, err = http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("regcache_upstream_ratelimit_remaining{registry=\"docker.io\"} %d", hub.Remaining("")); !strings.Contains(string(metrics), want) {
		t.Fatalf("metrics lack %q", want)
	}
}

// An exhausted budget is the figure an operator looks for: status --json
// must say "remaining": 0, not leave the key out.
func TestStatusJSONKeepsZeroRemaining(t *testing.T) {
	backend := testhub.StartRegistry(t)
	backend.PushImage(t, "library/alpine", "3.19", testhub.ImageOptions{})
	hub := testhub.NewHub(t, backend, testhub.Options{AnonymousLimit: 1})
	_, srv := startApp(t, fmt.Sprintf("storage: {root: %s}\nregistries:\n  docker.io: {url: %s}\n", t.TempDir(), hub.URL))
	resp, err := http.Get(srv.URL + "/v2/library/alpine/manifests/3.19")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("pull: %v %v", err, resp)
	}
	resp.Body.Close()
	if hub.Remaining("") != 0 {
		t.Fatalf("hub remaining %d after the only pull, want 0", hub.Remaining(""))
	}
	out, err := runCmd(t, "", "status", "--server", srv.URL, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Registries []struct {
			Budget map[string]any `json:"budget"`
		} `json:"registries"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.Registries) != 1 {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	if rem, ok := doc.Registries[0].Budget["remaining"]; !ok || rem != float64(0) {
		t.Errorf("budget %v: want \"remaining\": 0\n%s", doc.Registries[0].Budget, out)
	}
}

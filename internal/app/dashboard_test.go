package app

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/regcache/regcache/internal/testhub"
)

// TestDashboard: the page at / and /_regcache/ shows the same budget as
// /_regcache/status, the counted pulls saved and spent as the metrics
// count them, a dead mirror's open breaker with its last error, and the
// images pulled most; and never the upstream password.
func TestDashboard(t *testing.T) {
	s := newStack(t, stackOptions{user: "ci-user", hub: testhub.Options{UserLimit: 50},
		extra: "    reserve: 3\n    mirrors:\n      - url: http://127.0.0.1:1\n"})
	s.backend.PushImage(t, "library/alpine", "3.19", testhub.ImageOptions{Layers: 2})
	s.backend.PushImage(t, "team/app", "1", testhub.ImageOptions{})
	for _, p := range []struct{ repo, tag string }{{"library/alpine", "3.19"}, {"team/app", "1"}, {"library/alpine", "3.19"}} {
		if _, err := s.pull(p.repo, p.tag); err != nil {
			t.Fatal(err)
		}
	}
	// containerd starts a pull with a HEAD: a pull too, not a counted one.
	if resp, _ := s.do("HEAD", "/v2/library/alpine/manifests/3.19", map[string]string{"Accept": acceptAll}); resp.StatusCode != 200 {
		t.Fatalf("HEAD: %d", resp.StatusCode)
	}
	gets := testutil.ToFloat64(s.app.Metrics.ClientManifestGETs.WithLabelValues("docker.io"))
	spent := testutil.ToFloat64(s.app.Metrics.CountedPulls.WithLabelValues("docker.io"))
	if gets != 3 || spent != 2 {
		t.Errorf("client manifest GETs %v, counted pulls %v; want 3 and 2", gets, spent)
	}

	resp, body := s.do("GET", "/_regcache/status", nil)
	var st Status
	if err := json.Unmarshal(body, &st); err != nil || resp.StatusCode != 200 || len(st.Registries) != 1 {
		t.Fatalf("status: %d %v %s", resp.StatusCode, err, body)
	}
	reg := st.Registries[0]
	if !reg.Budget.Limited || reg.Budget.Limit != 50 || reg.BudgetUpdatedAt == nil || reg.Reserve != 3 {
		t.Fatalf("status budget %+v updated %v reserve %d", reg.Budget, reg.BudgetUpdatedAt, reg.Reserve)
	}
	mirror := reg.Sources[0]
	if mirror.State != "open" || !strings.Contains(mirror.LastError, "no answer") || mirror.LastErrorAt == nil {
		t.Errorf("the dead mirror in the status: %+v", mirror)
	}

	for _, path := range []string{"/", "/_regcache/"} {
		t.Run(path, func(t *testing.T) {
			resp, body := s.do("GET", path, nil)
			page := string(body)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
				t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			for _, want := range []string{
				fmt.Sprintf(`data-remaining="%d" data-limit="%d"`, reg.Budget.Remaining, reg.Budget.Limit),
				`data-saved="1"`, `data-spent="2"`,
				`data-source="127.0.0.1:1" data-state="open"`, "no answer (connection failed or timed out)",
				`data-source="origin" data-state="closed"`,
			} {
				if !strings.Contains(page, want) {
					t.Errorf("page lacks %q", want)
				}
			}
			images := regexp.MustCompile(`data-image="([^"]+)">\s*<td class="rank">\d+</td>[\s\S]*?<td class="num">(\d+)</td>`).FindAllStringSubmatch(page, -1)
			var got []string
			for _, m := range images {
				got = append(got, m[1]+" "+m[2])
			}
			if want := []string{"docker.io/library/alpine:3.19 3", "docker.io/team/app:1 1"}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("most pulled %q, want %q", got, want)
			}
			if strings.Contains(page, s.secret) {
				t.Error("the page shows the upstream password")
			}
		})
	}
	if resp, _ := s.do("GET", "/nothing-here", nil); resp.StatusCode != 404 {
		t.Errorf("an unknown path: %d, want 404", resp.StatusCode)
	}
}

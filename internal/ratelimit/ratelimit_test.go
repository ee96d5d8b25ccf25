package ratelimit

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/upstream"
)

func TestFromBudgetAndWrite(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		budget    upstream.Budget
		want      Report
		tableSubs []string
	}{
		{"no headers", upstream.Budget{}, Report{Registry: "docker.io", Identity: "anonymous"}, []string{"no limit"}},
		{"limited", upstream.Budget{Known: true, Limit: 100, Remaining: 76, Window: 6 * time.Hour, Source: "203.0.113.7"},
			Report{Registry: "docker.io", Identity: "anonymous", Limited: true, Limit: 100, Remaining: 76, WindowSeconds: 21600, Source: "203.0.113.7"},
			[]string{"100", "76", "6h0m0s", "203.0.113.7"}},
		{"exhausted with retry", upstream.Budget{Known: true, Limit: 100, Remaining: 0, Window: 6 * time.Hour, Source: "ci-user", RetryUntil: now.Add(90 * time.Second)},
			Report{Registry: "docker.io", Identity: "anonymous", Limited: true, Limit: 100, WindowSeconds: 21600, Source: "ci-user", RetryAfterSeconds: 90},
			[]string{"retry in 90s"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := FromBudget("docker.io", "anonymous", tc.budget, now)
			if got != tc.want {
				t.Fatalf("FromBudget = %+v\nwant %+v", got, tc.want)
			}
			var table, js bytes.Buffer
			if err := Write(&table, false, got); err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.tableSubs {
				if !strings.Contains(table.String(), s) {
					t.Errorf("table lacks %q:\n%s", s, table.String())
				}
			}
			if err := Write(&js, true, got); err != nil {
				t.Fatal(err)
			}
			var back Report
			if err := json.Unmarshal(js.Bytes(), &back); err != nil || back != got {
				t.Fatalf("JSON round trip: %v %+v", err, back)
			}
		})
	}
}

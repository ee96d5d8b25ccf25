package clientauth

import (
	"testing"
	"time"
)

func TestExpiring(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	for _, tc := range []struct {
		name string
		puts []struct{ k, until int } // at t0
		now  int                      // then put key 100 at this time
		want map[int]bool             // present afterwards (at now)
	}{
		{"room left", []struct{ k, until int }{{1, 10}, {2, 20}}, 0, map[int]bool{1: true, 2: true, 100: true}},
		{"full: the entry closest to lapsing goes", []struct{ k, until int }{{1, 30}, {2, 10}, {3, 20}}, 0, map[int]bool{1: true, 3: true, 100: true}},
		{"full: lapsed entries go first", []struct{ k, until int }{{1, 30}, {2, 10}, {3, 5}}, 6, map[int]bool{1: true, 2: true, 100: true}},
		{"full: all lapsed", []struct{ k, until int }{{1, 3}, {2, 4}, {3, 5}}, 6, map[int]bool{100: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newExpiring[int, string](3)
			for _, p := range tc.puts {
				e.put(p.k, "v", at(p.until), t0)
			}
			e.put(100, "new", at(tc.now+60), at(tc.now))
			if len(e.entries) > 3 {
				t.Fatalf("%d entries, bound 3", len(e.entries))
			}
			for k := range 101 {
				if _, ok := e.get(k, at(tc.now)); ok != tc.want[k] {
					t.Errorf("key %d present %v, want %v", k, ok, tc.want[k])
				}
			}
		})
	}
	e := newExpiring[int, string](3)
	e.put(1, "v", at(10), t0)
	if _, ok := e.get(1, at(10)); ok {
		t.Error("an entry is still there at its deadline")
	}
}

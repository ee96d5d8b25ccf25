package dashboard

import (
	"fmt"
	"html/template"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// page is what the template renders: every figure already worded, so the
// template only lays it out.
type page struct {
	Version        string
	RefreshSeconds int
	CSS            template.CSS
	JS             template.JS
	Notice         string
	Updated        string // the clock time of this rendering
	UpdatedISO     string
	Uptime         string // "" when the process start time is unknown
	Store          string // "" when the store's size is unknown
	Health         health
	Summary        []stat
	Registries     []registryView
	MostPulled     []pulledView
}

// health is a traffic light: Level is ok, warn or bad.
type health struct {
	Level, Text string
}

// stat is one figure of the summary strip.
type stat struct {
	Label, Value, Detail string
	Bar                  []barPart
}

// barPart is one segment of a horizontal bar, in percent of its width.
type barPart struct {
	X, W  string
	Class string
	Title string
}

type registryView struct {
	Name, Identity string
	Health         health
	Gauge          gauge
	BudgetLines    []string
	Pauses         []pauseView
	Saved, Spent   string
	PullBar        []barPart
	HitRatio       string
	Answers        string
	Served         string
	Fetched        string
	FromCache      string
	Sources        []sourceView
	Stale          []reasonView
	StaleTotal     string
}

// gauge is the pull budget drawn as a three-quarter ring: the track is 75
// units of a 100-unit circle (pathLength), the arc the remaining share of it.
type gauge struct {
	Limited          bool
	Remaining, Limit int
	WindowSeconds    int64
	Level            string
	Arc              string
	Tick             *tick // the reserve's mark on the ring
	Label            string
}

type tick struct{ X1, Y1, X2, Y2 string }

type pauseView struct {
	Class, What, Until, In string
}

type sourceView struct {
	Name, Role, URL string
	State           string // the breaker state, as the status JSON says it
	StateText       string
	Level           string
	Detail          string
	LastError       string
	LastErrorAgo    string
	Fetched         string
	Share           []barPart
	Hits            string
	BadDigests      int
}

type reasonView struct {
	Reason, What, Count string
}

type pulledView struct {
	Rank            int
	Registry, Image string
	Count           string
	Range           string // "between N and M" when the count may be high
	BarW            string
}

// staleReasons explains the reason label of regcache_stale_served_total.
var staleReasons = map[string]string{
	"rate_limited": "the origin was rate limited",
	"error":        "the origin failed or could not be reached",
	"reserve":      "the pull budget was at the reserve",
	"slow_origin":  "the origin was slower than revalidate_wait",
	"revalidating": "revalidated in the background (stale_while_revalidate)",
}

// pauseClasses explains the classes of Pause.
var pauseClasses = map[string]string{
	"counted_pulls": "Counted pulls (manifest GETs) after a pull-limit 429",
	"manifests":     "Manifest requests",
	"blobs":         "Blob downloads",
	"other":         "Tag lists and other requests",
}

// build words the snapshot and the metrics for the template.
func build(snap Snapshot, m metricSet, now time.Time) page {
	p := page{Updated: now.UTC().Format("15:04:05 UTC"), UpdatedISO: now.UTC().Format(time.RFC3339)}
	if start := time.Unix(int64(m.sum(mProcessStart)), 0); m.has(mProcessStart) && now.After(start) {
		p.Uptime = duration(now.Sub(start))
	}
	if m.has(mStoreBytes) {
		if b := m.sum(mStoreBytes); b > 0 {
			p.Store = bytesIEC(b)
		}
	}
	var saved, spent, hits, answers, served, fetched, stale float64
	p.Health = health{Level: "ok", Text: "All upstreams healthy"}
	var troubled []string
	for _, r := range snap.Registries {
		rv, f := registry(r, m, now)
		p.Registries = append(p.Registries, rv)
		saved += f.saved
		spent += f.spent
		hits += f.fromCache
		answers += f.answers
		served += f.served
		fetched += f.fetched
		stale += f.stale
		if rank(rv.Health.Level) > 0 {
			troubled = append(troubled, r.Name)
		}
		if rank(rv.Health.Level) > rank(p.Health.Level) {
			p.Health.Level = rv.Health.Level
		}
	}
	switch p.Health.Level {
	case "warn":
		p.Health.Text = "Degraded: " + strings.Join(troubled, ", ")
	case "bad":
		p.Health.Text = "Attention: " + strings.Join(troubled, ", ")
	}
	p.Summary = []stat{
		{Label: "Counted pulls saved", Value: count(saved),
			Detail: count(spent) + " spent at origins, of " + count(saved+spent) + " that clients asked for",
			Bar:    split(saved, spent, "saved", "spent")},
		{Label: "Answered from cache", Value: percent(hits, answers),
			Detail: count(hits) + " of " + count(answers) + " answers"},
		{Label: "Served from cache", Value: bytesIEC(max(served-fetched, 0)),
			Detail: bytesIEC(served) + " served, " + bytesIEC(fetched) + " fetched upstream",
			Bar:    split(max(served-fetched, 0), fetched, "saved", "spent")},
		{Label: "Stale answers", Value: count(stale),
			Detail: "cached tags served while an origin could not confirm them"},
	}
	top := uint64(1)
	for _, pl := range snap.MostPulled {
		top = max(top, pl.Count)
	}
	for i, pl := range snap.MostPulled {
		v := pulledView{Rank: i + 1, Registry: pl.Registry, Image: pl.Repository + ":" + pl.Tag,
			Count: count(float64(pl.Count)), BarW: num(100 * float64(pl.Count) / float64(top))}
		if pl.Overcount > 0 {
			v.Count = "≤ " + v.Count
			v.Range = fmt.Sprintf("between %s and %s pulls (a bounded counter)", count(float64(pl.Count-pl.Overcount)), count(float64(pl.Count)))
		}
		p.MostPulled = append(p.MostPulled, v)
	}
	return p
}

// figures are one registry's totals, for the summary.
type figures struct {
	saved, spent, fromCache, answers, served, fetched, stale float64
}

func registry(r Registry, m metricSet, now time.Time) (registryView, figures) {
	reg := []string{"registry", r.Name}
	var f figures
	f.spent = m.sum(mCountedPulls, reg...)
	f.saved = max(m.sum(mClientGETs, reg...)-f.spent, 0)
	results := m.by(mRequests, "result", reg...)
	f.fromCache = results["hit"] + results["stale"]
	f.answers = f.fromCache + results["miss"]
	f.served = m.sum(mServed, reg...)
	fetchedBy := m.by(mFetched, "source", reg...)
	for _, b := range fetchedBy {
		f.fetched += b
	}
	staleBy := m.by(mStale, "reason", reg...)
	for _, n := range staleBy {
		f.stale += n
	}

	v := registryView{
		Name: r.Name, Identity: r.Identity,
		Gauge:       budgetGauge(r.Budget, now),
		BudgetLines: budgetLines(r.Budget, now),
		Saved:       count(f.saved), Spent: count(f.spent),
		PullBar:  split(f.saved, f.spent, "saved", "spent"),
		HitRatio: percent(f.fromCache, f.answers),
		Answers: fmt.Sprintf("%s answers: %s hits, %s stale, %s fetched, %s failed", count(f.answers+results["error"]),
			count(results["hit"]), count(results["stale"]), count(results["miss"]), count(results["error"])),
		Served: bytesIEC(f.served), Fetched: bytesIEC(f.fetched), FromCache: bytesIEC(max(f.served-f.fetched, 0)),
		StaleTotal: count(f.stale),
	}
	for _, reason := range slices.Sorted(maps.Keys(staleBy)) {
		if staleBy[reason] > 0 {
			what := staleReasons[reason]
			if what == "" {
				what = reason
			}
			v.Stale = append(v.Stale, reasonView{Reason: reason, What: what, Count: count(staleBy[reason])})
		}
	}
	for _, pz := range r.Pauses {
		what := pauseClasses[pz.Class]
		if what == "" {
			what = pz.Class
		}
		v.Pauses = append(v.Pauses, pauseView{Class: pz.Class, What: what, Until: clock(pz.Until, now), In: "in " + duration(pz.Until.Sub(now))})
	}
	hitsBy := m.by(mMirrorHits, "mirror", reg...)
	var originState string
	var mirrorTrouble bool
	for _, s := range r.Sources {
		sv := source(s, now)
		sv.Fetched = bytesIEC(fetchedBy[s.Name])
		sv.Share = split(fetchedBy[s.Name], f.fetched-fetchedBy[s.Name], "share", "rest")
		if s.Name == "origin" {
			sv.Role, originState = "origin", s.State
		} else {
			sv.Role = "mirror"
			if n := hitsBy[s.Name]; n > 0 {
				sv.Hits = plural(int(n), "manifest or blob", "manifests and blobs")
			}
			mirrorTrouble = mirrorTrouble || s.State != "closed"
		}
		v.Sources = append(v.Sources, sv)
	}
	v.Health = registryHealth(r, originState, mirrorTrouble)
	return v, f
}

func registryHealth(r Registry, originState string, mirrorTrouble bool) health {
	switch {
	case len(r.Pauses) > 0:
		return health{"bad", "Held back"}
	case originState == "open":
		return health{"bad", "Origin unavailable"}
	case r.Budget.Limited && r.Budget.Remaining == 0:
		return health{"bad", "Pull limit reached"}
	case r.Budget.BelowReserve:
		return health{"warn", "At the reserve"}
	case originState == "half-open":
		return health{"warn", "Origin recovering"}
	case mirrorTrouble:
		return health{"warn", "Mirror trouble"}
	}
	return health{"ok", "Healthy"}
}

func source(s Source, now time.Time) sourceView {
	v := sourceView{Name: s.Name, URL: s.URL, State: s.State, BadDigests: s.BadDigests}
	switch s.State {
	case "closed":
		v.StateText, v.Level = "Healthy", "ok"
		if s.Failures > 0 {
			v.Detail = plural(s.Failures, "failure", "failures") + " in a row"
			v.Level = "warn"
		}
	case "half-open":
		v.StateText, v.Level = "Probing", "warn"
		v.Detail = "the next request is a probe"
	case "open":
		v.StateText, v.Level = "Open", "bad"
		v.Detail = "skipped until " + clock(s.OpenUntil, now) + " (in " + duration(s.OpenUntil.Sub(now)) + ")"
	default:
		v.StateText, v.Level = s.State, "warn"
	}
	if s.LastError != "" {
		v.LastError, v.LastErrorAgo = s.LastError, ago(s.LastErrorAt, now)
	}
	return v
}

// Where the ring is drawn, in the SVG's 120×120 viewBox.
const (
	ringCenter = 60
	ringRadius = 50
)

func budgetGauge(b Budget, now time.Time) gauge {
	g := gauge{Limited: b.Limited && b.Limit > 0, Level: "none", Label: "no limit"}
	if !g.Limited {
		return g
	}
	g.Remaining, g.Limit, g.WindowSeconds = b.Remaining, b.Limit, int64(b.Window/time.Second)
	frac := math.Min(math.Max(float64(b.Remaining)/float64(b.Limit), 0), 1)
	g.Arc = num(75 * frac)
	g.Label = "of " + count(float64(b.Limit)) + " left"
	switch {
	case b.Remaining <= b.Reserve || b.BelowReserve || b.Remaining == 0:
		g.Level = "bad"
	case frac < 0.25:
		g.Level = "warn"
	default:
		g.Level = "ok"
	}
	if b.Reserve > 0 {
		// The ring starts at 135° (SVG angles run clockwise) and spans 270°.
		a := (135 + 270*math.Min(float64(b.Reserve)/float64(b.Limit), 1)) * math.Pi / 180
		at := func(r float64) (string, string) {
			return num(ringCenter + r*math.Cos(a)), num(ringCenter + r*math.Sin(a))
		}
		t := &tick{}
		t.X1, t.Y1 = at(ringRadius - 9)
		t.X2, t.Y2 = at(ringRadius + 9)
		g.Tick = t
	}
	return g
}

func budgetLines(b Budget, now time.Time) []string {
	if !b.Limited {
		if b.UpdatedAt.IsZero() {
			return []string{"The origin has sent no rate-limit headers."}
		}
		return []string{"The origin's last answer carried no limit (" + ago(b.UpdatedAt, now) + ")."}
	}
	var out []string
	if b.Window > 0 {
		out = append(out, "Window "+duration(b.Window)+", rolling")
	}
	out = append(out, "Reported "+ago(b.UpdatedAt, now))
	switch {
	case b.Remaining >= b.Limit:
		out = append(out, "Full")
	case b.Window > 0:
		// Every pull counted by the last report has left the window by
		// then; pulls after it (other clients of the same account or
		// address) are unknown.
		out = append(out, "Full again by "+clock(b.UpdatedAt.Add(b.Window), now)+" at the latest")
	}
	if b.Reserve > 0 {
		line := "Reserve " + count(float64(b.Reserve)) + " kept for cache misses"
		if b.BelowReserve {
			line = "At the reserve (" + count(float64(b.Reserve)) + "): changed tags are served from the cache"
		}
		out = append(out, line)
	}
	return out
}

// split draws two figures as the two parts of a 100-wide bar; nothing when
// both are zero.
func split(a, b float64, classA, classB string) []barPart {
	if a+b <= 0 {
		return nil
	}
	wa := 100 * a / (a + b)
	return []barPart{
		{X: "0", W: num(wa), Class: classA},
		{X: num(wa), W: num(100 - wa), Class: classB},
	}
}

func rank(level string) int {
	switch level {
	case "warn":
		return 1
	case "bad":
		return 2
	}
	return 0
}

package app

import (
	"time"

	"github.com/regcache/regcache/internal/dashboard"
	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/topn"
)

// pullsTracked is how many images the most-pulled counter keeps: many
// times the ten the page shows, so their ranks are exact in practice, in
// a few tens of kilobytes however many tags are asked for.
const pullsTracked = 512

// pullKey is one image as pulled: a repository and a tag.
type pullKey struct {
	repo ref.Repo
	tag  ref.Tag
}

// pullCounter ranks the images pulled by tag (server.Pulls), in bounded
// memory. Repository names stay here: they never become metric labels.
type pullCounter struct{ c *topn.Counter[pullKey] }

func newPullCounter() *pullCounter { return &pullCounter{c: topn.New[pullKey](pullsTracked)} }

func (p *pullCounter) Pulled(repo ref.Repo, tag ref.Tag) { p.c.Add(pullKey{repo, tag}) }

// dashboardData is the App as the dashboard's Data: the same figures as
// /_regcache/status, and the most pulled images.
type dashboardData struct{ a *App }

func (d dashboardData) Snapshot(now time.Time, n int) dashboard.Snapshot {
	var snap dashboard.Snapshot
	for _, r := range d.a.status(now).Registries {
		dr := dashboard.Registry{Name: r.Name, Identity: r.Budget.Identity, Budget: dashboard.Budget{
			Limited: r.Budget.Limited, Limit: r.Budget.Limit, Remaining: r.Budget.Remaining,
			Window: time.Duration(r.Budget.WindowSeconds) * time.Second, UpdatedAt: deref(r.BudgetUpdatedAt),
			Reserve: r.Reserve, BelowReserve: r.BelowReserve,
		}}
		for _, p := range r.Pauses {
			dr.Pauses = append(dr.Pauses, dashboard.Pause{Class: p.Class, Until: p.Until})
		}
		for _, s := range r.Sources {
			dr.Sources = append(dr.Sources, dashboard.Source{Name: s.Name, URL: s.URL, State: s.State, Failures: s.Failures,
				OpenUntil: deref(s.OpenUntil), BadDigests: s.BadDigests, LastError: s.LastError, LastErrorAt: deref(s.LastErrorAt)})
		}
		snap.Registries = append(snap.Registries, dr)
	}
	for _, it := range d.a.pulls.c.Top(n) {
		snap.MostPulled = append(snap.MostPulled, dashboard.Pulled{Registry: it.Key.repo.Registry(), Repository: it.Key.repo.Path(),
			Tag: it.Key.tag.String(), Count: it.Count, Overcount: it.Overcount})
	}
	return snap
}

func deref(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

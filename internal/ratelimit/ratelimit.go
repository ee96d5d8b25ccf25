// Package ratelimit checks a registry's pull budget the way Docker documents
// it: a token for repository:ratelimitpreview/test:pull, then a HEAD of that
// repository's manifest, which is free and carries the ratelimit-* headers.
package ratelimit

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/regcache/regcache/internal/ref"
	"github.com/regcache/regcache/internal/regerr"
	"github.com/regcache/regcache/internal/upstream"
)

// Options says which registry to check and as whom.
type Options struct {
	Registry string // e.g. docker.io
	URL      string // e.g. https://registry-1.docker.io
	Auth     authn.Authenticator
	Identity string // what to call the identity in the report: a username or "anonymous"
	Repo     string // default ratelimitpreview/test
	Tag      string // default latest
}

// Report is the budget one identity has at one registry.
type Report struct {
	Registry      string `json:"registry"`
	Identity      string `json:"identity"`
	Limited       bool   `json:"limited"`
	Limit         int    `json:"limit"`
	Remaining     int    `json:"remaining"`
	WindowSeconds int64  `json:"window_seconds,omitempty"`
	Source        string `json:"source,omitempty"`
	// RetryAfterSeconds is set when the registry answered 429.
	RetryAfterSeconds int64 `json:"retry_after_seconds,omitempty"`
}

// FromBudget turns an upstream budget into a report.
func FromBudget(registry, identity string, b upstream.Budget, now time.Time) Report {
	r := Report{Registry: registry, Identity: identity, Limited: b.Known}
	if b.Known {
		r.Limit, r.Remaining, r.WindowSeconds, r.Source = b.Limit, b.Remaining, int64(b.Window/time.Second), b.Source
	}
	if !b.RetryUntil.IsZero() && b.RetryUntil.After(now) {
		r.RetryAfterSeconds = int64(b.RetryUntil.Sub(now).Round(time.Second) / time.Second)
	}
	return r
}

// Check asks the registry once and reports what its headers said.
func Check(ctx context.Context, o Options) (Report, error) {
	if o.Repo == "" {
		o.Repo = "ratelimitpreview/test"
	}
	if o.Tag == "" {
		o.Tag = "latest"
	}
	if o.Identity == "" {
		o.Identity = "anonymous"
	}
	reg, err := upstream.New(upstream.Config{Name: o.Registry, URL: o.URL, Auth: o.Auth})
	if err != nil {
		return Report{}, err
	}
	repo, err := ref.NewRepo(o.Registry, o.Repo)
	if err != nil {
		return Report{}, err
	}
	tag, err := ref.NewTag(o.Tag)
	if err != nil {
		return Report{}, err
	}
	_, herr := reg.HeadManifest(ctx, repo, ref.Manifest{Tag: tag}, nil)
	b := reg.Budget()
	// A 429 still tells the budget (it is zero); other failures do not.
	if herr != nil && !regerr.Is(herr, regerr.RateLimited) && !b.Known {
		return Report{}, herr
	}
	return FromBudget(o.Registry, o.Identity, b, time.Now()), nil
}

// Write prints reports as a table, or as JSON (one document: an object for
// one report, an array for several).
func Write(w io.Writer, asJSON bool, reports ...Report) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if len(reports) == 1 {
			return enc.Encode(reports[0])
		}
		return enc.Encode(reports)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REGISTRY\tIDENTITY\tLIMIT\tREMAINING\tWINDOW\tSOURCE")
	for _, r := range reports {
		if !r.Limited {
			fmt.Fprintf(tw, "%s\t%s\tno limit\t-\t-\t-\n", r.Registry, r.Identity)
			continue
		}
		window := "-"
		if r.WindowSeconds > 0 {
			window = (time.Duration(r.WindowSeconds) * time.Second).String()
		}
		rem := fmt.Sprint(r.Remaining)
		if r.RetryAfterSeconds > 0 {
			rem += fmt.Sprintf(" (limited, retry in %ds)", r.RetryAfterSeconds)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", r.Registry, r.Identity, r.Limit, rem, window, r.Source)
	}
	return tw.Flush()
}

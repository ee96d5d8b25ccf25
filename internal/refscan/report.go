package refscan

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable prints refs as an aligned table for people, followed by a
// summary line with the estimated Docker Hub pulls per run.
func WriteTable(w io.Writer, res Result) {
	var buf strings.Builder
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LOCATION\tKIND\tREFERENCE\tNORMALIZED\tHUB\tPINNED\tPULLS/RUN\tNOTE")
	hub, pulls := 0, 0
	for _, r := range res.Refs {
		norm := r.Normalized
		if norm == "" {
			norm = "-"
		}
		var notes []string
		if r.OverriddenBy != "" {
			notes = append(notes, "replaced by the kustomize images entry at "+r.OverriddenBy)
		}
		for _, n := range []string{r.Problem, r.Note} {
			if n != "" {
				notes = append(notes, n)
			}
		}
		fmt.Fprintf(tw, "%s:%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", r.File, r.Line, r.Kind, r.Original, norm,
			yesNo(r.DockerHub), yesNo(r.Pinned), r.PullsPerRun, strings.Join(notes, "; "))
		if r.PullsFromHub() {
			hub++
		}
		pulls += r.PullsPerRun
	}
	tw.Flush()
	// tabwriter pads the last column; trailing blanks help nobody.
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		io.WriteString(w, strings.TrimRight(line, " \n")+strings.Repeat("\n", strings.Count(line, "\n")))
	}
	fmt.Fprintf(w, "\n%d reference(s), %d to Docker Hub, about %d counted Docker Hub pull(s) per run\n", len(res.Refs), hub, pulls)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

package main

import (
	"encoding/json"
	"fmt"

	"github.com/regcache/regcache/internal/refscan"
	"github.com/spf13/cobra"
)

// errExit carries a non-zero exit without printing more than the command
// already did.
type errExit struct{ msg string }

func (e errExit) Error() string { return e.msg }

func newScanCmd() *cobra.Command {
	var (
		asJSON    bool
		failOn    string
		platforms int
	)
	cmd := &cobra.Command{
		Use:   "scan [PATH...]",
		Short: "List the container image references of a repository and what they cost in Docker Hub pulls",
		Long: `scan finds image references in Dockerfile*/Containerfile* ("# syntax=" frontend,
FROM, COPY --from, RUN --mount=...,from=, ARG defaults), compose files (and the
files their services extend), Kubernetes manifests, kustomization images
entries, Helm values, .gitlab-ci.yml, .circleci/config.yml,
.github/workflows/*.yml and buildspec*.yml, including "docker pull/run" lines of
their scripts. Paths default to ".".

` + refscan.PullEstimateHelp,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				args = []string{"."}
			}
			if failOn != "" && failOn != "dockerhub" {
				return fmt.Errorf("--fail-on: unknown value %q (supported: dockerhub)", failOn)
			}
			res := refscan.Scan(args, refscan.Options{Platforms: platforms})
			out := cmd.OutOrStdout()
			if asJSON {
				if res.Refs == nil {
					res.Refs = []refscan.Ref{}
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				enc.SetEscapeHTML(false)
				if err := enc.Encode(res); err != nil {
					return err
				}
			} else {
				refscan.WriteTable(out, res)
			}
			for _, e := range res.Errors {
				fmt.Fprintln(cmd.ErrOrStderr(), "error:", e.Error())
			}
			if failOn == "dockerhub" {
				n := 0
				for _, r := range res.Refs {
					if r.PullsFromHub() {
						n++
					}
				}
				if n > 0 {
					return errExit{fmt.Sprintf("%d reference(s) pull directly from Docker Hub", n)}
				}
			}
			if len(res.Errors) > 0 {
				return errExit{fmt.Sprintf("%d file(s) could not be scanned", len(res.Errors))}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	cmd.Flags().StringVar(&failOn, "fail-on", "", `exit non-zero if a reference matches; "dockerhub": any direct Docker Hub reference`)
	cmd.Flags().IntVar(&platforms, "platforms", 1, "platforms per multi-platform Dockerfile build, for the pull estimate")
	return cmd
}

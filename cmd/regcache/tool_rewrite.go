package main

import (
	"fmt"
	"os"

	"github.com/regcache/regcache/internal/refscan"
	"github.com/regcache/regcache/internal/rewrite"
	"github.com/spf13/cobra"
)

func newRewriteCmd() *cobra.Command {
	var (
		to         string
		dryRun     bool
		registries []string
	)
	cmd := &cobra.Command{
		Use:   "rewrite [PATH...] --to <server|ecr-public>",
		Short: "Rewrite image references to pull through regcache or from ECR Public",
		Long: `rewrite changes the image references that "regcache scan" finds, in place.

  --to cache.internal:5000   node:21 -> cache.internal:5000/docker.io/library/node:21
                             ghcr.io/org/img:1 -> cache.internal:5000/ghcr.io/org/img:1
  --to ecr-public            node:21 -> public.ecr.aws/docker/library/node:21
                             (Docker Official Images only; others are left alone
                             with a warning)

Only the bytes of each reference change: formatting, comments, YAML anchors
and digests stay (node:21@sha256:... keeps its digest). Running it again
changes nothing. References it cannot rewrite safely (a name built from an
ARG, ${VAR} or {{ template }} names, Helm charts with a separate registry key)
are listed, never guessed. Files are replaced atomically and keep their mode.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return fmt.Errorf("--to is required (a server host:port or ecr-public)")
			}
			t, err := rewrite.ParseTarget(to, registries)
			if err != nil {
				return err
			}
			if len(args) == 0 {
				args = []string{"."}
			}
			res := refscan.Scan(args, refscan.Options{})
			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			byFile := map[string][]refscan.Ref{}
			var files []string
			for _, r := range res.Refs {
				if _, ok := byFile[r.File]; !ok {
					files = append(files, r.File)
				}
				byFile[r.File] = append(byFile[r.File], r)
			}
			changed, failed := 0, len(res.Errors)
			for _, e := range res.Errors {
				fmt.Fprintln(errOut, "error:", e.Error(), "(file not modified)")
			}
			for _, f := range files {
				src, err := os.ReadFile(f)
				if err != nil {
					fmt.Fprintf(errOut, "error: %s: %v (file not modified)\n", f, err)
					failed++
					continue
				}
				fr := rewrite.Plan(f, src, byFile[f], t)
				for _, s := range fr.Skips {
					fmt.Fprintf(errOut, "warning: %s:%d: %s left unchanged: %s\n", f, s.Ref.Line, s.Ref.Original, s.Reason)
				}
				if !fr.Changed() {
					continue
				}
				changed++
				if dryRun {
					fmt.Fprint(out, rewrite.UnifiedDiff(f, fr.Old, fr.New))
					continue
				}
				if err := rewrite.WriteAtomic(f, fr.New); err != nil {
					fmt.Fprintf(errOut, "error: %s: %v (file not modified)\n", f, err)
					failed++
					continue
				}
				for _, c := range fr.Changes {
					fmt.Fprintf(out, "%s:%d: %s -> %s\n", f, c.Ref.Line, c.Old, c.New)
				}
			}
			verb := "rewrote"
			if dryRun {
				verb = "would rewrite"
			}
			fmt.Fprintf(errOut, "%s %d file(s)\n", verb, changed)
			if failed > 0 {
				return errExit{fmt.Sprintf("%d file(s) could not be processed", failed)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&to, "to", "", `regcache server host[:port], or "ecr-public"`)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print a unified diff instead of writing")
	cmd.Flags().StringSliceVar(&registries, "registries", nil, "only rewrite references to these registries (default: all; server targets only)")
	return cmd
}

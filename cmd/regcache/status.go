package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/regcache/regcache/internal/app"
	"github.com/regcache/regcache/internal/ratelimit"
)

func newStatusCmd() *cobra.Command {
	var server, username string
	var asJSON, passwordStdin bool
	cmd := &cobra.Command{
		Use:   "status --server URL [--username U --password-stdin]",
		Short: "Show a running server's upstream pull budgets and source health",
		Long: `Show, for every upstream of a running regcache, the pull budget its origin
last reported (limit, remaining, window, source) and the state of each mirror's
and the origin's circuit breaker. The figures come from the server's
/_regcache/status endpoint; asking costs no pulls. A server with client_auth
shows them only to a user of its htpasswd file: give --username, and the
password on standard input (--password-stdin) or in REGCACHE_PASSWORD.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			url := strings.TrimRight(server, "/") + "/_regcache/status"
			if !strings.Contains(server, "://") {
				url = "http://" + url
			}
			client := &http.Client{Timeout: 10 * time.Second}
			req, err := http.NewRequestWithContext(cmd.Context(), http.MethodGet, url, nil)
			if err != nil {
				return fmt.Errorf("--server: %w", err)
			}
			if username != "" {
				password, err := readPassword(cmd, passwordStdin, "REGCACHE_PASSWORD", username)
				if err != nil {
					return err
				}
				req.SetBasicAuth(username, password)
			}
			resp, err := client.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
			if err != nil {
				return err
			}
			if resp.StatusCode == http.StatusUnauthorized && username == "" {
				return fmt.Errorf("%s: %s: this regcache has client_auth; log in with --username and --password-stdin", url, resp.Status)
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s", url, resp.Status)
			}
			var st app.Status
			if err := json.Unmarshal(body, &st); err != nil {
				return fmt.Errorf("%s: not a regcache status document: %w", url, err)
			}
			out := cmd.OutOrStdout()
			if asJSON {
				_, err := out.Write(body)
				return err
			}
			var reps []ratelimit.Report
			for _, r := range st.Registries {
				reps = append(reps, r.Budget)
			}
			if err := ratelimit.Write(out, false, reps...); err != nil {
				return err
			}
			fmt.Fprintln(out)
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "REGISTRY\tSOURCE\tURL\tSTATE\tFAILURES")
			for _, r := range st.Registries {
				for _, s := range r.Sources {
					state := s.State
					if s.OpenUntil != nil && s.State == "open" {
						state += " until " + s.OpenUntil.Format(time.RFC3339)
					}
					if s.BadDigests > 0 {
						state += fmt.Sprintf(" (%d bad digests skipped)", s.BadDigests)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", r.Name, s.Name, s.URL, state, s.Failures)
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&server, "server", "http://127.0.0.1:5000", "regcache server URL")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVarP(&username, "username", "u", os.Getenv("REGCACHE_USERNAME"), "user of the server's client_auth htpasswd file (env REGCACHE_USERNAME)")
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from standard input (else REGCACHE_PASSWORD)")
	return cmd
}

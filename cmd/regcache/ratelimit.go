package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"

	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/credentials"
	"github.com/regcache/regcache/internal/ratelimit"
)

func newRatelimitCmd() *cobra.Command {
	var (
		url, username, dockerConfig string
		passwordStdin, asJSON, anon bool
	)
	cmd := &cobra.Command{
		Use:   "ratelimit [REGISTRY]",
		Short: "Show a registry's pull rate limit for anonymous or authenticated pulls",
		Long: `Check the pull budget the way Docker documents it: a token for
repository:ratelimitpreview/test:pull, then a HEAD of its manifest (HEAD is not
counted as a pull). Prints limit, remaining, window and the source the limit is
counted for; a registry that sends no rate-limit headers is reported as "no limit".

Credentials, first found wins: --username with --password-stdin; the
environment (DOCKERHUB_USERNAME and DOCKERHUB_PASSWORD); the docker config
(--docker-config, $DOCKER_CONFIG or ~/.docker/config.json, credential helpers
included). --anonymous ignores them all.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			registry := "docker.io"
			if len(args) == 1 {
				registry = strings.ToLower(args[0])
			}
			if url == "" {
				url = "https://" + registry
				if registry == "docker.io" {
					url = "https://registry-1.docker.io"
				}
			}
			auth, identity, err := ratelimitAuth(cmd, registry, username, passwordStdin, dockerConfig, anon)
			if err != nil {
				return err
			}
			rep, err := ratelimit.Check(cmd.Context(), ratelimit.Options{Registry: registry, URL: url, Auth: auth, Identity: identity})
			if err != nil {
				return err
			}
			return ratelimit.Write(cmd.OutOrStdout(), asJSON, rep)
		},
	}
	f := cmd.Flags()
	f.StringVar(&url, "url", "", "registry API URL (default https://registry-1.docker.io for docker.io, else https://REGISTRY)")
	f.StringVarP(&username, "username", "u", "", "account to check (password from --password-stdin or DOCKERHUB_PASSWORD)")
	f.BoolVar(&passwordStdin, "password-stdin", false, "read the password or access token from standard input")
	f.StringVar(&dockerConfig, "docker-config", "", "docker config.json (or its directory) to take credentials from")
	f.BoolVar(&anon, "anonymous", false, "check the anonymous budget, ignoring any credentials")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// ratelimitAuth picks the credentials for the check and names the identity
// for the report, never printing the secret.
func ratelimitAuth(cmd *cobra.Command, registry, username string, passwordStdin bool, dockerConfig string, anon bool) (authn.Authenticator, string, error) {
	if anon {
		return authn.Anonymous, "anonymous", nil
	}
	if username == "" {
		username = os.Getenv("DOCKERHUB_USERNAME")
	}
	if username != "" {
		password, err := readPassword(cmd, passwordStdin, "DOCKERHUB_PASSWORD", username)
		if err != nil {
			return nil, "", err
		}
		return authn.FromConfig(authn.AuthConfig{Username: username, Password: password}), username, nil
	}
	if dockerConfig == "" {
		if d := os.Getenv("DOCKER_CONFIG"); d != "" {
			dockerConfig = d
		} else if home, err := os.UserHomeDir(); err == nil {
			dockerConfig = filepath.Join(home, ".docker")
		}
		if _, err := os.Stat(filepath.Join(dockerConfig, "config.json")); err != nil {
			return authn.Anonymous, "anonymous", nil
		}
	}
	auth, err := credentials.For(registry, &config.Auth{DockerConfig: dockerConfig}, "--docker-config")
	if err != nil {
		return nil, "", err
	}
	ac, err := auth.Authorization()
	if err != nil {
		return nil, "", err
	}
	if ac.Username == "" && ac.Password == "" && ac.Auth == "" && ac.IdentityToken == "" {
		return authn.Anonymous, "anonymous", nil
	}
	id := ac.Username
	if id == "" {
		id = "docker-config"
	}
	return auth, id, nil
}

// readPassword reads username's password from the first line of standard
// input (--password-stdin), or else from the environment variable env.
func readPassword(cmd *cobra.Command, fromStdin bool, env, username string) (string, error) {
	if fromStdin {
		line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
		if err != nil && line == "" {
			return "", errors.New("--password-stdin: nothing on standard input")
		}
		if p := strings.TrimRight(line, "\r\n"); p != "" {
			return p, nil
		}
		return "", fmt.Errorf("no password for %s on standard input", username)
	}
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("no password for %s: use --password-stdin or set %s", username, env)
}

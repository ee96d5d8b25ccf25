// Package credentials turns the auth sections of regcache's config into
// go-containerregistry authenticators: a username with a password from the
// config, an environment variable or a file, or a docker config.json with
// its credential helpers.
package credentials

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/docker/cli/cli/config"
	"github.com/google/go-containerregistry/pkg/authn"

	regconfig "github.com/regcache/regcache/internal/config"
)

// For resolves an auth section for registry. key is the config path of the
// section (for example registries.docker.io.auth), used in errors. A nil
// section is anonymous. Secrets are read now, so a missing variable or an
// unreadable file stops start-up; docker configs are read at each token
// fetch, so rotated credentials and helper-issued tokens stay current.
func For(registry string, a *regconfig.Auth, key string) (authn.Authenticator, error) {
	if a == nil {
		return authn.Anonymous, nil
	}
	if a.DockerConfig != "" {
		path, err := configFile(a.DockerConfig)
		if err != nil {
			return nil, fmt.Errorf("%s.docker_config: %w", key, err)
		}
		dc := &dockerConfig{path: path, registry: registry}
		// Parse once now so a broken file is reported at start-up.
		if _, err := dc.Authorization(); err != nil {
			return nil, fmt.Errorf("%s.docker_config: %w", key, err)
		}
		return dc, nil
	}
	secret, err := a.Secret(key)
	if err != nil {
		return nil, err
	}
	return authn.FromConfig(authn.AuthConfig{Username: a.Username, Password: secret}), nil
}

func configFile(p string) (string, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %v", p, errors.Unwrap(err))
	}
	if fi.IsDir() {
		p = filepath.Join(p, "config.json")
	}
	return p, nil
}

// dockerConfig reads credentials for one registry from a docker config.json,
// including credsStore and credHelpers entries.
type dockerConfig struct {
	path     string
	registry string
}

// dockerHubKey is where docker stores Docker Hub credentials.
const dockerHubKey = "https://index.docker.io/v1/"

func (d *dockerConfig) Authorization() (*authn.AuthConfig, error) {
	f, err := os.Open(d.path)
	if err != nil {
		return nil, fmt.Errorf("cannot read %s: %v", d.path, errors.Unwrap(err))
	}
	defer f.Close()
	cf, err := config.LoadFromReader(f)
	if err != nil {
		return nil, fmt.Errorf("cannot parse %s: %v", d.path, err)
	}
	keys := []string{d.registry}
	if d.registry == "docker.io" {
		keys = []string{dockerHubKey, "docker.io", "index.docker.io", "registry-1.docker.io"}
	}
	for _, k := range keys {
		ac, err := cf.GetAuthConfig(k)
		if err != nil {
			// Credential helper failures can echo their input; keep only
			// which helper path failed.
			return nil, fmt.Errorf("credentials for %s from %s: credential helper failed", d.registry, d.path)
		}
		if ac.Username != "" || ac.Password != "" || ac.Auth != "" || ac.IdentityToken != "" || ac.RegistryToken != "" {
			return &authn.AuthConfig{Username: ac.Username, Password: ac.Password, Auth: ac.Auth,
				IdentityToken: ac.IdentityToken, RegistryToken: ac.RegistryToken}, nil
		}
	}
	return &authn.AuthConfig{}, nil
}

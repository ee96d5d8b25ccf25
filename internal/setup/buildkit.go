package setup

import (
	"fmt"
	"path/filepath"

	"github.com/pelletier/go-toml/v2/unstable"
)

func buildkitTarget() Target {
	return Target{
		Name:     "buildkit",
		Short:    "buildkitd.toml [registry.\"<registry>\"] mirrors (buildkitd; --buildx: buildx's default for new builders)",
		Writable: true,
		Build: func(o Options) (Plan, error) {
			std, caPath := "etc/buildkit/buildkitd.toml", func(s server) string {
				return filepath.Join("etc/buildkit/certs", s.host, "regcache-ca.crt")
			}
			if o.BuildxDir != "" {
				// buildx reads buildkitd.default.toml for every builder it
				// creates without --buildkitd-config; it is the user's file.
				o.Root = "/"
				std = filepath.Join(o.BuildxDir, "buildkitd.default.toml")
				caPath = func(s server) string { return filepath.Join(o.BuildxDir, "certs", s.host, "regcache-ca.crt") }
			} else if o.Path != "" {
				caPath = func(s server) string { return filepath.Join(filepath.Dir(o.Path), "certs", s.host, "regcache-ca.crt") }
			}
			p, s, err := o.filePlan(std, caPath, func(b []byte, s server) ([]byte, error) {
				return mergeBuildkitd(b, o.registries(), s)
			})
			if err != nil {
				return Plan{}, err
			}
			p.Notes = append(p.Notes,
				"BuildKit sends ?ns=<registry> to the mirror, so one regcache serves every registry listed; when regcache fails it pulls from the registry itself, without an error.",
				"http/insecure/ca are set on the mirror's own [registry.\"<mirror>\"] table: BuildKit reads them from there (on the docker.io table they would apply to Docker Hub instead).")
			if o.BuildxDir != "" {
				p.Notes = append(p.Notes,
					"buildx reads this file only when it creates a builder: re-create existing ones (docker buildx rm <name>; docker buildx create --use --driver docker-container). It copies the CA named in it into the builder's container.",
					"The default builder (docker driver) uses dockerd's own settings, not this file: regcache setup docker.")
			} else {
				p.Notes = append(p.Notes,
					"buildx: docker buildx create --use --driver docker-container --buildkitd-config "+p.Files[0].Path+" (re-create a builder to change its configuration; buildx copies the CA into the builder's container). --buildx installs it as buildx's default instead.",
					"buildkitd: restart it to re-read the file.")
			}
			p.Notes = append(p.Notes, "A buildx builder (docker-container driver) runs in a container with its own network: "+s.host+" must be reachable from containers, not only from the host.")
			p.Notes = append(p.Notes, loopbackWarning(s, "a buildx builder's container")...)
			if s.login.user != "" {
				p.Notes = append(p.Notes, fmt.Sprintf("client_auth: BuildKit asks the client (buildx) for a login for every host it contacts, the mirror included: printf '%%s' \"$%s\" | docker login --username %s --password-stdin %s on the machine that runs the build.", s.login.env, s.login.user, s.host))
			}
			return p, nil
		},
	}
}

func mergeBuildkitd(src []byte, registries []string, s server) ([]byte, error) {
	if len(src) == 0 {
		src = []byte("# Pulls go through regcache (regcache setup buildkit).\n")
	}
	var err error
	for _, r := range registries {
		if src, err = ensureTableKV(src, []string{"registry", r}, "mirrors", func(e *tomlExpr) (string, bool) {
			if e != nil && hasAll(e.strs, s.host) {
				return "", true
			}
			list := []string{s.host}
			if e != nil {
				list = append(list, e.strs...)
			}
			return tomlStrings(list), false
		}); err != nil {
			return nil, err
		}
	}
	if s.insecure {
		key := "insecure"
		if s.scheme == "http" {
			key = "http"
		}
		if src, err = ensureTableKV(src, []string{"registry", s.host}, key, func(e *tomlExpr) (string, bool) {
			return "true", e != nil && e.text == key+" = true"
		}); err != nil {
			return nil, err
		}
	}
	if s.ca != "" {
		if src, err = ensureTableKV(src, []string{"registry", s.host}, "ca", func(e *tomlExpr) (string, bool) {
			return tomlStrings([]string{s.ca}), e != nil && hasAll(e.strs, s.ca)
		}); err != nil {
			return nil, err
		}
	}
	m, err := decodeTOML(src)
	if err != nil {
		return nil, err
	}
	for _, r := range registries {
		mirrors, _ := lookup(m, "registry", r, "mirrors").([]any)
		found := false
		for _, v := range mirrors {
			found = found || v == s.host
		}
		if !found {
			return nil, fmt.Errorf("registry %q is defined in a form regcache does not edit; edit this file by hand", r)
		}
	}
	return src, nil
}

// ensureTableKV sets key in [table], creating the table at the end if
// needed. value gets the existing expression (nil if absent) and returns the
// new value text, or keep=true to leave it.
func ensureTableKV(src []byte, table []string, key string, value func(*tomlExpr) (string, bool)) ([]byte, error) {
	d, err := parseTOML(src)
	if err != nil {
		return nil, err
	}
	hs := d.find(unstable.Table, table...)
	if len(hs) == 0 {
		v, _ := value(nil)
		return appendBlock(src, fmt.Sprintf("[%s]\n  %s = %s\n", tomlPath(table), tomlKey(key), v)), nil
	}
	var cur *tomlExpr
	if i, ok := d.kv(hs[0], key); ok {
		cur = &d.exprs[i]
	}
	v, keep := value(cur)
	if keep {
		return src, nil
	}
	return d.setKV(hs[0], key, v, nil), nil
}

func tomlPath(keys []string) string {
	out := ""
	for i, k := range keys {
		if i > 0 {
			out += "."
		}
		out += tomlKey(k)
	}
	return out
}

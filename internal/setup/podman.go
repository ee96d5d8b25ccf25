package setup

import (
	"fmt"

	"github.com/pelletier/go-toml/v2/unstable"
)

// podmanDropIn is the drop-in regcache owns: podman, buildah, skopeo and
// CRI-O read registries.conf.d/*.conf after registries.conf, so the main
// file, which distributions own and upgrade, is never edited.
const podmanDropIn = "etc/containers/registries.conf.d/50-regcache.conf"

func podmanTarget() Target {
	return Target{
		Name:     "podman",
		Short:    "containers registries.conf.d drop-in: [[registry]] + [[registry.mirror]] per registry (podman, buildah, skopeo, CRI-O)",
		Writable: true,
		Build: func(o Options) (Plan, error) {
			p, s, err := o.filePlan(podmanDropIn, func(s server) string { return certsDCA("etc/containers/certs.d", s) }, func(b []byte, s server) ([]byte, error) {
				return mergeRegistriesConf(b, o.registries(), s)
			})
			if err != nil {
				return Plan{}, err
			}
			p.Notes = append(p.Notes,
				"podman replaces the prefix with the mirror location, so regcache receives /v2/<registry>/<repository>/...; when regcache fails it pulls from the registry itself, without an error.",
				"A [[registry]] table for a prefix replaces the one that registries.conf or an earlier drop-in has for it: if you set mirrors or blocked for these registries there, repeat them in this file.",
				"podman, buildah and skopeo read it on every command: no restart. CRI-O reads it at start and on SIGHUP: sudo systemctl reload crio.",
				"Check: podman pull --log-level=debug docker.io/library/alpine:3.19 2>&1 | grep "+s.host)
			if s.ca != "" {
				p.Notes = append(p.Notes, "podman and CRI-O trust regcache's CA from "+s.ca+".")
			}
			if s.login.user != "" {
				p.Notes = append(p.Notes, fmt.Sprintf("client_auth: podman looks up the mirror's own login, so mirror pulls log in too: printf '%%s' \"$%s\" | podman login --username %s --password-stdin %s (as the user that pulls; root stores it in /run/containers/0/auth.json). CRI-O: put that login in the file its global_auth_file (crio.conf, [crio.image]) names.", s.login.env, s.login.user, s.host))
				if s.scheme == "http" {
					p.Notes = append(p.Notes, "The login crosses the network in clear over plain http: serve regcache with tls.")
				}
			}
			return p, nil
		},
	}
}

// mergeRegistriesConf adds, for each registry, a [[registry]] entry (or
// reuses the user's one) with regcache as its first [[registry.mirror]].
func mergeRegistriesConf(src []byte, registries []string, s server) ([]byte, error) {
	if len(src) == 0 {
		src = []byte("# Pulls go through regcache (regcache setup podman).\n# A drop-in: registries.conf and earlier drop-ins still apply.\n")
	}
	for _, r := range registries {
		var err error
		if src, err = ensurePodmanRegistry(src, r, s); err != nil {
			return nil, err
		}
	}
	m, err := decodeTOML(src)
	if err != nil {
		return nil, err
	}
	if _, v1 := m["registries"]; v1 {
		return nil, fmt.Errorf("registries.conf uses the v1 [registries.*] format, which cannot be mixed with [[registry]]; convert it to v2 first")
	}
	return src, nil
}

func ensurePodmanRegistry(src []byte, registry string, s server) ([]byte, error) {
	d, err := parseTOML(src)
	if err != nil {
		return nil, err
	}
	location := s.host + "/" + registry
	mirror := fmt.Sprintf("[[registry.mirror]]\nlocation = %s\n", tomlString(location))
	if s.insecure {
		mirror += "insecure = true\n"
	}
	for _, h := range d.find(unstable.ArrayTable, "registry") {
		prefix, loc := "", ""
		if i, ok := d.kv(h, "prefix"); ok && d.exprs[i].isStr {
			prefix = d.exprs[i].strs[0]
		}
		if i, ok := d.kv(h, "location"); ok && d.exprs[i].isStr {
			loc = d.exprs[i].strs[0]
		}
		if prefix != registry && (prefix != "" || loc != registry) {
			continue
		}
		// The mirrors of this entry are the [[registry.mirror]] tables that
		// follow it directly.
		_, next := d.section(h)
		for j := next; j < len(d.exprs); {
			e := d.exprs[j]
			if e.kind != unstable.ArrayTable || !keyEq(e.key, []string{"registry", "mirror"}) {
				break
			}
			if i, ok := d.kv(j, "location"); ok && d.exprs[i].isStr && d.exprs[i].strs[0] == location {
				if !s.insecure {
					return src, nil
				}
				return d.setKV(j, "insecure", "true", func(e tomlExpr) bool { return e.text == "insecure = true" }), nil
			}
			_, j = d.section(j)
		}
		// regcache goes first: podman tries mirrors in order.
		if next < len(d.exprs) {
			return d.insertBlock(next, mirror), nil
		}
		return appendBlock(src, mirror), nil
	}
	block := fmt.Sprintf("[[registry]]\nprefix = %s\nlocation = %s\n\n%s", tomlString(registry), tomlString(registry), mirror)
	return appendBlock(src, block), nil
}

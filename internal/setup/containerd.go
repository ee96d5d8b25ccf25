package setup

import (
	"fmt"
	"path/filepath"

	"github.com/pelletier/go-toml/v2/unstable"
)

func containerdTarget() Target {
	return Target{
		Name:     "containerd",
		Short:    "containerd certs.d/<registry>/hosts.toml for each registry (ctr, CRI, nerdctl)",
		Writable: true,
		Build: func(o Options) (Plan, error) {
			s, err := o.server()
			if err != nil {
				return Plan{}, err
			}
			dir := o.path("etc/containerd/certs.d")
			var p Plan
			for _, r := range o.registries() {
				r := r
				p.Files = append(p.Files, File{
					Path:  filepath.Join(dir, r, "hosts.toml"),
					Merge: func(b []byte) ([]byte, error) { return mergeHostsTOML(b, r, s) },
				})
			}
			p.Notes = append(p.Notes,
				"containerd asks regcache first and sends ?ns=<registry> so regcache knows the upstream; when regcache fails it falls back to the server above.",
				"Point containerd at this directory in /etc/containerd/config.toml, then restart containerd:",
				"  containerd 2.x:  [plugins.\"io.containerd.cri.v1.images\".registry]",
				"                     config_path = \""+dir+"\"",
				"  containerd 1.x:  [plugins.\"io.containerd.grpc.v1.cri\".registry]",
				"                     config_path = \""+dir+"\"",
				"ctr reads it with: ctr image pull --hosts-dir "+dir+" docker.io/library/alpine:3.19")
			return p, nil
		},
	}
}

// mergeHostsTOML ensures hosts.toml for registry lists regcache as a
// pull/resolve host ahead of any other host, and names the real upstream
// as server when the file does not already.
func mergeHostsTOML(src []byte, registry string, s server) ([]byte, error) {
	if len(src) == 0 {
		src = []byte(fmt.Sprintf("# Pulls of %s go through regcache (regcache setup containerd).\n", registry))
	}
	d, err := parseTOML(src)
	if err != nil {
		return nil, err
	}
	if _, ok := d.kv(-1, "server"); !ok {
		// Root keys must precede the first table.
		line := "server = " + tomlString(upstream(registry)) + "\n"
		if len(d.exprs) > 0 && d.exprs[0].kind != unstable.KeyValue {
			src = d.insertBlock(0, line)
		} else {
			src = appendBlock(src, line)
		}
		if d, err = parseTOML(src); err != nil {
			return nil, err
		}
	}
	hostKey := []string{"host", s.url()}
	if hs := d.find(unstable.Table, hostKey...); len(hs) == 0 {
		block := fmt.Sprintf("[host.%s]\n  capabilities = [\"pull\", \"resolve\"]\n", tomlString(s.url()))
		if s.scheme == "https" && s.insecure {
			block += "  skip_verify = true\n"
		}
		if s.ca != "" {
			block += "  ca = " + tomlString(s.ca) + "\n"
		}
		// containerd tries hosts in file order: regcache goes first.
		first := -1
		for i, e := range d.exprs {
			if e.kind == unstable.Table && len(e.key) >= 1 && e.key[0] == "host" {
				first = i
				break
			}
		}
		if first >= 0 {
			src = d.insertBlock(first, block)
		} else {
			src = appendBlock(src, block)
		}
	} else {
		src = d.setKV(hs[0], "capabilities", `["pull", "resolve"]`, func(e tomlExpr) bool {
			return hasAll(e.strs, "pull", "resolve")
		})
		if s.scheme == "https" && s.insecure {
			d, err = parseTOML(src)
			if err != nil {
				return nil, err
			}
			src = d.setKV(d.find(unstable.Table, hostKey...)[0], "skip_verify", "true", nil)
		}
		if s.ca != "" {
			d, err = parseTOML(src)
			if err != nil {
				return nil, err
			}
			src = d.setKV(d.find(unstable.Table, hostKey...)[0], "ca", tomlString(s.ca), func(e tomlExpr) bool {
				return e.isStr && len(e.strs) == 1 && e.strs[0] == s.ca
			})
		}
	}
	m, err := decodeTOML(src)
	if err != nil {
		return nil, err
	}
	if caps, _ := lookup(m, "host", s.url(), "capabilities").([]any); len(caps) == 0 {
		return nil, fmt.Errorf("host %q is defined in a form regcache does not edit; edit this file by hand", s.url())
	}
	return src, nil
}

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
			named := "/etc/containerd/certs.d"
			caDir := "etc/containerd/certs.d"
			if o.Path != "" {
				named, caDir = dir, dir
			}
			var p Plan
			s = o.installCA(&p, s, certsDCA(caDir, s))
			p.Files = append(hostsTOMLFiles(dir, o.registries(), s), p.Files...)
			p.Notes = append(p.Notes,
				"containerd asks regcache first and sends ?ns=<registry> so regcache knows the upstream; when regcache fails it pulls from the server above, without an error: watch regcache's metrics.")
			if o.Path == "" {
				p.Notes = append(p.Notes,
					"containerd 2.2 and later (CRI, Kubernetes) read /etc/containerd/certs.d (and /etc/docker/certs.d) by default: nothing to change, and changes apply on the next pull.")
			}
			p.Notes = append(p.Notes,
				"Older containerd (CRI, Kubernetes) reads the directory once config_path points at it in /etc/containerd/config.toml; restart containerd after adding it:",
				"  containerd 2.0, 2.1:  [plugins.\"io.containerd.cri.v1.images\".registry]",
				"                          config_path = \""+named+"\"",
				"  containerd 1.x:       [plugins.\"io.containerd.grpc.v1.cri\".registry]",
				"                          config_path = \""+named+"\"",
				"ctr reads it with: ctr image pull --hosts-dir "+named+" docker.io/library/alpine:3.19")
			p.Notes = append(p.Notes, mirrorLoginNotes(s, "containerd", fmt.Sprintf("ctr image pull --user %s (it asks for the password); Kubernetes: an imagePullSecret for %s.", s.login.user, s.host))...)
			return p, nil
		},
	}
}

// hostsTOMLFiles are <dir>/<registry>/hosts.toml for each registry.
func hostsTOMLFiles(dir string, registries []string, s server) []File {
	var files []File
	for _, r := range registries {
		r := r
		files = append(files, File{
			Path:  filepath.Join(dir, r, "hosts.toml"),
			Merge: func(b []byte) ([]byte, error) { return mergeHostsTOML(b, r, s) },
		})
	}
	return files
}

// mergeHostsTOML ensures hosts.toml for registry lists regcache as a
// pull/resolve host ahead of any other host, and names the real upstream
// as server when the file does not already.
func mergeHostsTOML(src []byte, registry string, s server) ([]byte, error) {
	if len(src) == 0 {
		src = []byte(fmt.Sprintf("# Pulls of %s go through regcache (written by regcache setup).\n", registry))
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

package setup

import (
	"fmt"
	"path/filepath"
)

func kindTarget() Target {
	return Target{
		Name:     "kind",
		Short:    "kind: containerdConfigPatches snippet and the hosts.toml files it mounts",
		Writable: true,
		Build: func(o Options) (Plan, error) {
			s, err := o.server()
			if err != nil {
				return Plan{}, err
			}
			dir := o.Path
			if dir == "" {
				dir = "regcache-certs.d"
			}
			// kind mounts host paths as given: make it absolute.
			abs, err := filepath.Abs(dir)
			if err != nil {
				return Plan{}, err
			}
			var p Plan
			if s.caPEM != nil {
				// The node sees the mounted directory, not the host's
				// paths: the CA travels inside it.
				o.installCA(&p, s, filepath.Join(abs, "regcache-ca.crt"))
				s.ca = "/etc/containerd/certs.d/regcache-ca.crt"
			}
			p.Files = append(hostsTOMLFiles(abs, o.registries(), s), p.Files...)
			cluster := fmt.Sprintf(`kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
  - |-
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
nodes:
  - role: control-plane
    extraMounts:
      - hostPath: %s
        containerPath: /etc/containerd/certs.d
        readOnly: true
`, abs)
			p.Snippets = []Snippet{{Title: "kind-regcache.yaml (kind create cluster --config kind-regcache.yaml)", Lang: "yaml", Body: cluster}}
			p.Notes = []string{
				"Write the hosts.toml files with --write, then create the cluster. Add the extraMounts to every node you declare.",
				"The nodes are containers: " + s.host + " must be reachable from containers (not localhost, which is the node itself).",
			}
			p.Notes = append(p.Notes, loopbackWarning(s, "a kind node")...)
			p.Notes = append(p.Notes, mirrorLoginNotes(s, "containerd", "an imagePullSecret for "+s.host+".")...)
			return p, nil
		},
	}
}

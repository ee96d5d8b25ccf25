package setup

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"gopkg.in/yaml.v3"
)

func k3sTarget() Target {
	return Target{
		Name:     "k3s",
		Short:    "k3s/RKE2 registries.yaml mirrors",
		Writable: true,
		Build: func(o Options) (Plan, error) {
			caPath := func(server) string { return "etc/rancher/k3s/regcache-ca.crt" }
			if o.Path != "" {
				caPath = func(server) string { return filepath.Join(filepath.Dir(o.Path), "regcache-ca.crt") }
			}
			p, s, err := o.filePlan("etc/rancher/k3s/registries.yaml", caPath, func(b []byte, s server) ([]byte, error) {
				return mergeK3s(b, o.registries(), s)
			})
			if err != nil {
				return Plan{}, err
			}
			p.Notes = append(p.Notes,
				"k3s writes these mirrors into containerd's hosts.toml, so regcache receives ?ns=<registry>; when regcache fails, containerd pulls from the registry itself.",
				"Restart to apply, on every node: sudo systemctl restart k3s (agents: k3s-agent)")
			if s.login.user != "" {
				p.Notes = append(p.Notes, fmt.Sprintf("client_auth: k3s takes the login from this file, for the mirror too: add configs: %q: auth: {username: %s, password: ...} by hand (setup never writes passwords; keep the file mode 0600), or list the registries in anonymous_registries.", s.host, s.login.user))
			}
			return p, nil
		},
	}
}

// mergeK3s edits registries.yaml through the yaml.v3 node tree, which keeps
// comments; the file is re-emitted with two-space indentation.
func mergeK3s(src []byte, registries []string, s server) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(src)).Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	if doc.Kind == 0 {
		doc = yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{
			Kind: yaml.MappingNode, HeadComment: "Pulls go through regcache (regcache setup k3s).",
		}}}
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, errors.New("registries.yaml: top level is not a mapping")
	}
	for _, r := range registries {
		mirrors, err := child(root, "mirrors")
		if err != nil {
			return nil, err
		}
		reg, err := child(mirrors, r)
		if err != nil {
			return nil, err
		}
		ep, err := childKind(reg, "endpoint", yaml.SequenceNode)
		if err != nil {
			return nil, err
		}
		found := false
		for _, e := range ep.Content {
			found = found || e.Value == s.url()
		}
		if !found {
			ep.Content = append([]*yaml.Node{{Kind: yaml.ScalarNode, Tag: "!!str", Value: s.url(), Style: yaml.DoubleQuotedStyle}}, ep.Content...)
		}
	}
	if s.scheme == "https" && (s.insecure || s.ca != "") {
		configs, err := child(root, "configs")
		if err != nil {
			return nil, err
		}
		host, err := child(configs, s.host)
		if err != nil {
			return nil, err
		}
		tls, err := child(host, "tls")
		if err != nil {
			return nil, err
		}
		if s.insecure {
			v, err := childKind(tls, "insecure_skip_verify", yaml.ScalarNode)
			if err != nil {
				return nil, err
			}
			v.Tag, v.Value = "!!bool", "true"
		}
		if s.ca != "" {
			v, err := childKind(tls, "ca_file", yaml.ScalarNode)
			if err != nil {
				return nil, err
			}
			v.Tag, v.Value = "!!str", s.ca
		}
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func child(m *yaml.Node, key string) (*yaml.Node, error) {
	return childKind(m, key, yaml.MappingNode)
}

// childKind returns the value of key in mapping m, creating it with kind if
// absent (or null).
func childKind(m *yaml.Node, key string, kind yaml.Kind) (*yaml.Node, error) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value != key {
			continue
		}
		v := m.Content[i+1]
		if v.Kind == yaml.ScalarNode && v.Tag == "!!null" && kind != yaml.ScalarNode {
			*v = yaml.Node{Kind: kind}
		}
		if v.Kind != kind {
			return nil, fmt.Errorf("line %d: %q has an unexpected type; edit this file by hand", v.Line, key)
		}
		return v, nil
	}
	k := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}
	if key != "" && (bytes.ContainsAny([]byte(key), ".:")) {
		k.Style = yaml.DoubleQuotedStyle
	}
	v := &yaml.Node{Kind: kind}
	if kind == yaml.ScalarNode {
		v.Tag = "!!str"
	}
	m.Content = append(m.Content, k, v)
	return v, nil
}

// Package setup generates and installs the client configuration that sends
// image pulls through a regcache server: container engines (docker,
// containerd, BuildKit, podman, k3s, kind) and CI systems (CodeBuild,
// CircleCI, GitHub Actions, GitLab).
//
// Existing files are edited in their own format, never by appending text:
// daemon.json through encoding/json (keeping key order and unknown keys),
// TOML through go-toml's position-aware parser with edits confined to the
// lines of the keys regcache owns (so comments and layout survive), and
// YAML through the yaml.v3 node API (which keeps comments). Every merge is
// idempotent: merging into its own output returns the same bytes.
package setup

// Package refscan finds container image references in the files a CI
// pipeline is made of: Dockerfiles, compose files, Kubernetes manifests,
// Helm values and the pipeline definitions of GitLab CI, CircleCI, GitHub
// Actions and AWS CodeBuild.
//
// Each reference carries its position and the exact byte span of the literal
// text, so that package rewrite can replace it without re-serialising the
// file: formatting, comments and YAML anchors stay as they were. References
// whose name is computed (Dockerfile ARG, ${VAR}, {{ template }}) are
// reported with a Problem instead of a guess.
package refscan

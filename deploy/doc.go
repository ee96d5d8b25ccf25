// Package deploy holds regcache's deployment artefacts (image/, helm/,
// kubernetes/, systemd/, aws/) and, in its tests, the checks that prove them
// against the tools that consume them (helm, systemd-analyze, rain) and
// against what the regcache binary accepts. It has no code of its own.
package deploy

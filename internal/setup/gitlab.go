package setup

import (
	"fmt"
	"path/filepath"
)

// gitlabDind is the runner host directory whose files every dind service
// of the runner mounts: daemon.json with the mirror, certs.d with the CA.
const gitlabDind = "etc/regcache/dind"

func gitlabTarget() Target {
	return Target{
		Name:     "gitlab",
		Short:    "GitLab CI: dind mirror per job (.gitlab-ci.yml) or per runner (config.toml volumes + files on the runner host)",
		Writable: true,
		Build: func(o Options) (Plan, error) {
			p, s, err := o.filePlan(filepath.Join(gitlabDind, "daemon.json"), func(s server) string {
				return certsDCA(filepath.Join(gitlabDind, "certs.d"), s)
			}, mergeDaemonJSON)
			if err != nil {
				return Plan{}, err
			}
			// The job waits for dind's mirror, then logs in for references
			// that name the cache.
			script := "    - " + waitMirror(s) + "\n"
			if s.login.user != "" {
				script += "    - " + dockerLogin(s, "") + "\n"
			}
			script += "    - docker build -t \"$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA\" .\n"
			tls := `  variables:
    # dind listens on 2376 with TLS only and writes the client certificate
    # to /certs/client, which the runner must share with the job (volumes).
    DOCKER_TLS_CERTDIR: "/certs"
`
			service := fmt.Sprintf("      command: %s\n", yamlList(dockerdFlags(s)))
			if s.caPEM != nil {
				dir := "/etc/docker/certs.d/" + s.host
				service += fmt.Sprintf(`      variables:
        REGCACHE_CA: |
%s      # dind trusts a registry's CA from %s/: write it there,
      # then start dind as its image does.
      entrypoint:
        - sh
        - -c
        - |
          mkdir -p %s
          printf '%%s\n' "$REGCACHE_CA" > %s/ca.crt
          exec dockerd-entrypoint.sh "$@"
        - sh
`, indent(string(s.caPEM), "          "), dir, dir, dir)
			}
			perJob := fmt.Sprintf(`# Docker-in-Docker build: the dind service's dockerd pulls through regcache.
# Per job, for runners you do not administer. Not together with the runner
# configuration below: dockerd refuses registry-mirrors given twice.
build:
  image: docker:29
  services:
    - name: docker:29-dind
      alias: docker
%s%s  script:
%s`, service, tls, script)
			volumes := []string{"/certs/client", "/cache", "/" + gitlabDind + "/daemon.json:/etc/docker/daemon.json:ro"}
			if s.caPEM != nil {
				volumes = append(volumes, "/"+gitlabDind+"/certs.d:/etc/docker/certs.d:ro")
			}
			what := "the mirror"
			if s.caPEM != nil {
				what = "the mirror and the CA"
			}
			runner := fmt.Sprintf(`# /etc/gitlab-runner/config.toml of the runner that takes docker-in-docker
# jobs. privileged is for dind; /certs/client is shared so that jobs reach
# dind over TLS; every dind service a job starts mounts %s
# from /%s on the runner host. Jobs that start no dind start nothing.
[[runners]]
  [runners.docker]
    privileged = true
    volumes = %s
`, what, gitlabDind, yamlList(volumes))
			perRunner := fmt.Sprintf(`# With the runner configuration above, a job declares a plain dind.
build:
  image: docker:29
  services:
    - name: docker:29-dind
      alias: docker
%s  script:
%s`, tls, script)
			p.Snippets = []Snippet{
				{Title: ".gitlab-ci.yml: mirror per job", Lang: "yaml", Body: perJob},
				{Title: "runner config.toml: mirror for every dind service", Lang: "toml", Body: runner},
				{Title: ".gitlab-ci.yml: with the runner configuration", Lang: "yaml", Body: perRunner},
			}
			p.Notes = append(p.Notes,
				"The files above go on each runner host (regcache setup gitlab --write installs them) and serve the runner configuration only.",
				"The dind service runs in its own container: localhost there is the dind container. "+s.host+" must be the name or address that containers on the runner host reach regcache at (not a name only the host's /etc/hosts knows).")
			p.Notes = append(p.Notes, loopbackWarning(s, "the dind service container")...)
			p.Notes = append(p.Notes,
				"Job and service images (image:, services:) are pulled by the runner host's dockerd: run \"regcache setup docker --server "+s.url()+" --write\" on each runner host.",
				"GitLab's Dependency Proxy, in every tier, is a pull-through cache for Docker Hub images inside GitLab: image: ${CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX}/node:21 (projects in a group). regcache adds the other registries, pulls that cost no Docker Hub budget (ECR Public, mirror.gcr.io), serving cached tags while Docker Hub fails, and one cache for every CI system.")
			if s.login.user != "" {
				p.Notes = append(p.Notes, mirrorLoginNotes(s, "dind's dockerd", "the docker login in the job's script.")...)
				p.Notes = append(p.Notes, fmt.Sprintf("For job and service images that name %s, give the runner the login in a masked CI/CD variable DOCKER_AUTH_CONFIG: {\"auths\": {%q: {\"auth\": \"<base64 of %s:password>\"}}}; the job's password comes from the masked variable %s.", s.host, s.host, s.login.user, s.login.env))
			}
			return p, nil
		},
	}
}

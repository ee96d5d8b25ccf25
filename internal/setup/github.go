package setup

import (
	"fmt"
)

func githubTarget() Target {
	return Target{
		Name:  "github-actions",
		Short: "GitHub Actions: runner dockerd step, setup-buildx-action buildkitd config, job containers",
		Build: func(o Options) (Plan, error) {
			s, err := o.server()
			if err != nil {
				return Plan{}, err
			}
			// buildx copies the CA that buildkitd.toml names from the runner
			// into the builder's container: name the copy the first step
			// writes.
			bs := s
			if s.caPEM != nil {
				bs.ca = "/etc/docker/certs.d/" + s.host + "/ca.crt"
			}
			bk, err := mergeBuildkitd(nil, o.registries(), bs)
			if err != nil {
				return Plan{}, err
			}
			secret := fmt.Sprintf("${{ secrets.%s }}", s.login.env)
			login := ""
			if s.login.user != "" {
				// BuildKit asks buildx for the login of every host it
				// contacts, the mirror too: log in before the builder pulls.
				login = fmt.Sprintf(`      - uses: docker/login-action@v3
        with:
          registry: %s
          username: %s
          password: %s
`, s.host, s.login.user, secret)
			}
			steps := fmt.Sprintf(`jobs:
  build:
    runs-on: [self-hosted, linux]
    steps:
      # docker pull/run and the docker build driver use the runner's dockerd.
      - name: Pull Docker Hub images through regcache
        run: |
%s%s      # docker buildx (docker-container driver) runs its own BuildKit:
      # give it the same mirror.
      - uses: docker/setup-buildx-action@v3
        with:
          buildkitd-config-inline: |
%s      - uses: actions/checkout@v4
`, indent(jobCA(s, "sudo ")+jobMirror(s, "sudo ", "systemctl reload docker"), "          "), login, indent(string(bk), "            "))
			creds := ""
			if s.login.user != "" {
				creds = fmt.Sprintf("      credentials:\n        username: %s\n        password: %s\n", s.login.user, secret)
			}
			containers := fmt.Sprintf(`# Job and service containers are pulled by the runner before any step
# runs: name the cache (regcache rewrite .github/workflows --to %[1]s).
jobs:
  test:
    runs-on: [self-hosted, linux]
    container:
      image: %[1]s/docker.io/library/node:21
%[2]s    services:
      db:
        image: %[1]s/docker.io/library/postgres:16
%[3]s`, s.host, creds, indent(creds, "  "))
			notes := []string{
				"The first step configures the runner's dockerd (localhost there is the runner). The buildx builder runs in a container with its own network: " + s.host + " must be reachable from containers on the runner, not only from the runner itself.",
			}
			notes = append(notes, loopbackWarning(s, "a buildx builder's container")...)
			notes = append(notes,
				"GitHub-hosted runners run the same steps (passwordless sudo) and reach the cache over the internet; self-hosted runners next to regcache can use its internal address.",
				internetNote(s, "GitHub-hosted runners"))
			if s.caPEM != nil {
				notes = append(notes, "The first step writes regcache's CA (inline: a CA certificate is not a secret) to /etc/docker/certs.d/"+s.host+"/ca.crt for dockerd; buildx copies it into the builder. Job and service containers are pulled before any step: on self-hosted runners install the CA once with regcache setup docker --ca-file; GitHub-hosted runners need a certificate from a public CA for them.")
			}
			if s.login.user != "" {
				notes = append(notes,
					"client_auth: docker/login-action stores the login for the runner's docker CLI; buildx's BuildKit uses it for the mirror too, and credentials: gives it to the job and service container pulls. Store the password as the repository or organization secret "+s.login.env+".")
				notes = append(notes, mirrorLoginNotes(s, "the runner's dockerd", "the docker/login-action step.")...)
			}
			return Plan{
				Snippets: []Snippet{
					{Title: ".github/workflows/build.yml steps", Lang: "yaml", Body: steps},
					{Title: ".github/workflows/test.yml job and service containers", Lang: "yaml", Body: containers},
				},
				Notes: notes,
			}, nil
		},
	}
}

package setup

import (
	"fmt"
)

func circleciTarget() Target {
	return Target{
		Name:  "circleci",
		Short: "CircleCI: docker executor (rewritten images, auth:), machine executor daemon config, setup_remote_docker",
		Build: func(o Options) (Plan, error) {
			s, err := o.server()
			if err != nil {
				return Plan{}, err
			}
			// auth: is the docker executor's login for an image; with
			// client_auth it is regcache's, from a context.
			auth := ""
			head := "# regcache holds the upstream credentials: no auth: block with Docker Hub\n# credentials."
			if s.login.user != "" {
				auth = fmt.Sprintf("        auth:\n          username: %s\n          password: $%s   # from a context\n", s.login.user, s.login.env)
				head = "# auth: is the regcache login (client_auth), kept in a context."
			}
			dockerExec := fmt.Sprintf(`# Docker executor: CircleCI pulls the job's images itself, before any step
# runs, so they must name the cache: regcache rewrite .circleci/config.yml --to %[1]s
%[3]s
jobs:
  test:
    docker:
      - image: %[1]s/docker.io/cimg/node:21.7       # was cimg/node:21.7
%[2]s      - image: %[1]s/docker.io/library/redis:7.2    # was redis:7.2
%[2]s`, s.host, auth, head)
			machine := fmt.Sprintf(`# Machine executor: the VM's own dockerd pulls; point it at regcache first.
jobs:
  integration:
    machine:
      image: ubuntu-2204:current
    steps:
      - run:
          name: Pull Docker Hub images through regcache
          command: |
%s      - checkout
`, indent(jobDockerd(s, "sudo ", "systemctl reload docker"), "            "))
			loginStep := ""
			if s.login.user != "" {
				loginStep = fmt.Sprintf("      - run:\n          name: Log in to regcache\n          command: |\n            %s\n", dockerLogin(s, ""))
			}
			remote := fmt.Sprintf(`# setup_remote_docker: the remote engine cannot be configured, so only
# references that name the cache go through it. Rewrite the Dockerfiles,
# compose files and docker pull/run lines first: regcache rewrite . --to %[1]s
jobs:
  build:
    docker:
      - image: %[1]s/docker.io/cimg/base:current
%[2]s    steps:
      - checkout
      - setup_remote_docker
%[3]s      - run: docker build -t app .   # its FROM lines name %[1]s/docker.io/...
`, s.host, auth, loginStep)
			notes := []string{
				"CircleCI states that, through its partnership with Docker, images that the docker executor pulls from Docker Hub are with few exceptions not rate limited (circleci.com/docs/private-images). docker pull and docker build inside jobs (machine executor, setup_remote_docker) are: that is where the cache saves most.",
				"Docker executor images and the setup_remote_docker engine are pulled by CircleCI's machines: " + s.host + " must be reachable from them (from the internet, on CircleCI cloud) with a certificate from a public CA, or use self-hosted runners on regcache's network. The machine executor's own dockerd trusts --ca-file from the script above; nothing can make CircleCI's machines trust it.",
				internetNote(s, "Jobs on CircleCI cloud"),
			}
			notes = append(notes, loopbackWarning(s, "CircleCI's machines")...)
			if s.scheme == "http" {
				notes = append(notes, "The docker executor cannot pull from a plain-http registry: give regcache an https address for it.")
			}
			notes = append(notes, mirrorLoginNotes(s, "the machine executor's dockerd", "the docker login at the end of its script; the docker executor uses auth:, setup_remote_docker the docker login step.")...)
			return Plan{
				Snippets: []Snippet{
					{Title: ".circleci/config.yml: docker executor", Lang: "yaml", Body: dockerExec},
					{Title: ".circleci/config.yml: machine executor", Lang: "yaml", Body: machine},
					{Title: ".circleci/config.yml: setup_remote_docker", Lang: "yaml", Body: remote},
				},
				Notes: notes,
			}, nil
		},
	}
}

package setup

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
)

// The CI targets print fragments to paste into pipeline definitions; they
// have nothing to install on the machine running regcache setup.

// daemonReloadScript merges the mirror into the job host's daemon.json with
// jq (present on CodeBuild standard, CircleCI machine and GitHub-hosted
// images) and makes dockerd re-read it: registry-mirrors and
// insecure-registries are reloaded on SIGHUP, no restart needed.
// sudo is "sudo " on runners that run jobs as a normal user and "" where
// the job already runs as root (CodeBuild).
func daemonReloadScript(s server, sudo, reload string) string {
	filter := fmt.Sprintf(`.["registry-mirrors"] = ([%q] + ((.["registry-mirrors"] // []) - [%q]))`, s.url(), s.url())
	if s.insecure {
		filter += fmt.Sprintf(` | .["insecure-registries"] = (((.["insecure-registries"] // []) - [%q]) + [%q])`, s.host, s.host)
	}
	return strings.Join([]string{
		sudo + "mkdir -p /etc/docker",
		"[ -s /etc/docker/daemon.json ] || echo '{}' | " + sudo + "tee /etc/docker/daemon.json >/dev/null",
		"jq '" + filter + "' /etc/docker/daemon.json > /tmp/daemon.json",
		sudo + "mv /tmp/daemon.json /etc/docker/daemon.json",
		sudo + reload,
		"docker info --format '{{.RegistryConfig.Mirrors}}'",
	}, "\n")
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if l != "" {
			lines[i] = prefix + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

func serverPort(s server) string {
	if _, port, err := net.SplitHostPort(s.host); err == nil {
		return port
	}
	if s.scheme == "http" {
		return "80"
	}
	return "443"
}

func codebuildTarget() Target {
	return Target{
		Name:  "codebuild",
		Short: "AWS CodeBuild: buildspec fragment, build image advice, CloudFormation snippet",
		Build: func(o Options) (Plan, error) {
			s, err := o.server()
			if err != nil {
				return Plan{}, err
			}
			buildspec := fmt.Sprintf(`version: 0.2
# Docker Hub pulls of this build go through regcache: no Docker Hub
# password in Secrets Manager, no "docker login" in the build.
# Needs PrivilegedMode (docker in the build) and the project in regcache's VPC.
env:
  variables:
    REGCACHE_SERVER: %q
phases:
  install:
    commands:
      - |
%s`, s.host, indent(daemonReloadScript(s, "", "pkill -HUP dockerd"), "        "))
			cfn := fmt.Sprintf(`# Let the CodeBuild project reach regcache and tell builds where it is.
RegcacheIngressFromCodeBuild:
  Type: AWS::EC2::SecurityGroupIngress
  Properties:
    GroupId: !Ref RegcacheSecurityGroup
    SourceSecurityGroupId: !Ref CodeBuildSecurityGroup
    IpProtocol: tcp
    FromPort: %[1]s
    ToPort: %[1]s
    Description: CodeBuild pulls through regcache
BuildProject:
  Type: AWS::CodeBuild::Project
  Properties:
    # ... Name, Source, Artifacts, ServiceRole as before ...
    Environment:
      Type: LINUX_CONTAINER
      ComputeType: BUILD_GENERAL1_SMALL
      Image: aws/codebuild/standard:7.0
      PrivilegedMode: true
      EnvironmentVariables:
        - Name: REGCACHE_SERVER
          Value: %[2]q
    VpcConfig:
      VpcId: !Ref VpcId
      Subnets: !Ref PrivateSubnetIds
      SecurityGroupIds: [!Ref CodeBuildSecurityGroup]
`, serverPort(s), s.host)
			return Plan{
				Snippets: []Snippet{
					{Title: "buildspec.yml fragment", Lang: "yaml", Body: buildspec},
					{Title: "CloudFormation resources", Lang: "yaml", Body: cfn},
				},
				Notes: []string{
					"The build image (provisioning phase) is pulled by CodeBuild before the buildspec runs, so the buildspec cannot redirect it.",
					"Use a curated aws/codebuild/* image, or move a Docker Hub build image to ECR Public:",
					"  regcache rewrite buildspec.yml --to ecr-public   (node:21 -> public.ecr.aws/docker/library/node:21)",
					"or to a private ECR repository, which CodeBuild pulls with the service role (ImagePullCredentialsType: SERVICE_ROLE).",
					fmt.Sprintf("FROM lines and docker pull/run in the buildspec can also name the cache directly: regcache rewrite . --to %s", s.host),
				},
			}, nil
		},
	}
}

func circleciTarget() Target {
	return Target{
		Name:  "circleci",
		Short: "CircleCI: docker-executor image rewrite and machine-executor daemon config",
		Build: func(o Options) (Plan, error) {
			s, err := o.server()
			if err != nil {
				return Plan{}, err
			}
			dockerExec := fmt.Sprintf(`# Docker executor: CircleCI pulls job images itself, so name them through
# regcache (regcache rewrite .circleci/config.yml --to %[1]s does this).
# No auth: block with Docker Hub credentials is needed any more.
jobs:
  test:
    docker:
      - image: %[1]s/docker.io/cimg/node:21.7       # was cimg/node:21.7
      - image: %[1]s/docker.io/library/redis:7.2    # was redis:7.2
`, s.host)
			machine := fmt.Sprintf(`# Machine executor: point the VM's dockerd at regcache first.
jobs:
  integration:
    machine:
      image: ubuntu-2204:current
    steps:
      - run:
          name: Pull Docker Hub images through regcache
          command: |
%s      - checkout
`, indent(daemonReloadScript(s, "sudo ", "systemctl reload docker"), "            "))
			notes := []string{"Jobs on CircleCI cloud must reach the server over the internet: use https with a certificate they trust (or self-hosted runners)."}
			if s.scheme == "http" {
				notes = append(notes, "The docker executor cannot pull from a plain-http registry: give regcache an https address for it.")
			}
			return Plan{
				Snippets: []Snippet{
					{Title: ".circleci/config.yml: docker executor", Lang: "yaml", Body: dockerExec},
					{Title: ".circleci/config.yml: machine executor", Lang: "yaml", Body: machine},
				},
				Notes: notes,
			}, nil
		},
	}
}

func githubTarget() Target {
	return Target{
		Name:  "github-actions",
		Short: "GitHub Actions: step for self-hosted runners, setup-buildx-action buildkitd config",
		Build: func(o Options) (Plan, error) {
			s, err := o.server()
			if err != nil {
				return Plan{}, err
			}
			bk, err := mergeBuildkitd(nil, o.registries(), s)
			if err != nil {
				return Plan{}, err
			}
			steps := fmt.Sprintf(`jobs:
  build:
    runs-on: [self-hosted, linux]
    steps:
      # docker pull/run and the docker build driver use the runner's dockerd.
      - name: Pull Docker Hub images through regcache
        run: |
%s      # docker buildx (docker-container driver) runs its own BuildKit:
      # give it the same mirror.
      - uses: docker/setup-buildx-action@v3
        with:
          buildkitd-config-inline: |
%s      - uses: actions/checkout@v4
`, indent(daemonReloadScript(s, "sudo ", "systemctl reload docker"), "          "), indent(string(bk), "            "))
			return Plan{
				Snippets: []Snippet{{Title: ".github/workflows/build.yml steps", Lang: "yaml", Body: steps}},
				Notes: []string{
					"GitHub-hosted runners must reach the server over the internet; self-hosted runners next to regcache can use the internal address.",
					"Job containers (container:, services:) are pulled before any step runs: rewrite them with regcache rewrite .github/workflows --to " + s.host,
				},
			}, nil
		},
	}
}

func gitlabTarget() Target {
	return Target{
		Name:  "gitlab",
		Short: "GitLab CI: dind service --registry-mirror and runner config.toml",
		Build: func(o Options) (Plan, error) {
			s, err := o.server()
			if err != nil {
				return Plan{}, err
			}
			args := []string{fmt.Sprintf("%q", "--registry-mirror="+s.url())}
			if s.insecure {
				args = append(args, fmt.Sprintf("%q", "--insecure-registry="+s.host))
			}
			cmd := "[" + strings.Join(args, ", ") + "]"
			ci := fmt.Sprintf(`# Docker-in-Docker builds: the dind daemon pulls through regcache.
build:
  image: docker:27
  services:
    - name: docker:27-dind
      alias: docker
      command: %s
  variables:
    DOCKER_TLS_CERTDIR: "/certs"
  script:
    - docker info --format '{{.RegistryConfig.Mirrors}}'
    - docker build -t "$CI_REGISTRY_IMAGE:$CI_COMMIT_SHA" .
`, cmd)
			runner := fmt.Sprintf(`# /etc/gitlab-runner/config.toml: every job's dind service gets the
# mirror, without touching each .gitlab-ci.yml.
[[runners]]
  [runners.docker]
    privileged = true
    [[runners.docker.services]]
      name = "docker:27-dind"
      alias = "docker"
      command = %s
`, cmd)
			return Plan{
				Snippets: []Snippet{
					{Title: ".gitlab-ci.yml", Lang: "yaml", Body: ci},
					{Title: "runner config.toml", Lang: "toml", Body: runner},
				},
				Notes: []string{
					"Job and service images are pulled by the runner host's dockerd: run \"regcache setup docker --server " + s.url() + " --write\" on each runner host.",
				},
			}, nil
		},
	}
}

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
			var p Plan
			if s.ca != "" {
				// The node sees the mounted directory, not the host's
				// paths: the CA travels inside it.
				pem := s.caPEM
				p.Files = append(p.Files, File{Path: filepath.Join(dir, "regcache-ca.crt"), Merge: func([]byte) ([]byte, error) { return pem, nil }})
				s.ca = "/etc/containerd/certs.d/regcache-ca.crt"
			}
			for _, r := range o.registries() {
				r := r
				p.Files = append(p.Files, File{
					Path:  filepath.Join(dir, r, "hosts.toml"),
					Merge: func(b []byte) ([]byte, error) { return mergeHostsTOML(b, r, s) },
				})
			}
			// kind mounts host paths as given: make it absolute.
			abs, err := filepath.Abs(dir)
			if err != nil {
				return Plan{}, err
			}
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
				"The server address must be reachable from inside the kind node containers (not localhost).",
			}
			return p, nil
		},
	}
}

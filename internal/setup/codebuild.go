package setup

import (
	"fmt"
	"strings"
)

func codebuildTarget() Target {
	return Target{
		Name:  "codebuild",
		Short: "AWS CodeBuild: buildspec for curated and custom build images, CloudFormation snippet",
		Build: func(o Options) (Plan, error) {
			s, err := o.server()
			if err != nil {
				return Plan{}, err
			}
			env := fmt.Sprintf("env:\n  variables:\n    REGCACHE_SERVER: %q\n", s.host)
			if s.login.user != "" {
				env += fmt.Sprintf("  secrets-manager:\n    # secret-id:json-key; the service role may read it (CloudFormation below)\n    %s: \"regcache/%s:password\"\n", s.login.env, s.login.user)
			}
			// Curated images start dockerd from their entrypoint: reload it.
			// -x matches the process named dockerd only, not
			// dockerd-entrypoint.sh, which a HUP would end.
			curated := fmt.Sprintf(`version: 0.2
# Curated aws/codebuild/* image with PrivilegedMode: its entrypoint has
# started dockerd; point it at regcache. Docker Hub pulls then need no
# Docker Hub password in Secrets Manager and no docker login to Docker Hub.
%sphases:
  install:
    commands:
      - |
%s`, env, indent(jobDockerd(s, "", "pkill -HUP -x dockerd"), "        "))
			start := "nohup dockerd --host=unix:///var/run/docker.sock --storage-driver=overlay2 " +
				strings.Join(dockerdFlags(s), " ") + " > /var/log/dockerd.log 2>&1 &"
			custom := fmt.Sprintf(`version: 0.2
# Custom build image with PrivilegedMode: nothing starts dockerd, so the
# build does, with the mirror on its command line (no daemon.json, no jq).
%sphases:
  install:
    commands:
      - |
%s`, env, indent(jobCA(s, "")+start+"\n"+waitMirror(s)+"\n"+jobLogin(s), "        "))
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
			if s.login.user != "" {
				cfn += fmt.Sprintf(`# The buildspec reads the regcache password from Secrets Manager.
RegcacheLoginRead:
  Type: AWS::IAM::Policy
  Properties:
    PolicyName: regcache-login
    Roles: [!Ref CodeBuildServiceRole]
    PolicyDocument:
      Version: "2012-10-17"
      Statement:
        - Effect: Allow
          Action: secretsmanager:GetSecretValue
          Resource: !Sub "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:regcache/%s-*"
`, s.login.user)
			}
			notes := []string{
				"The build container's dockerd pulls: " + s.host + " must resolve and be reachable inside the project's VPC subnets (a private DNS name, or the address of regcache's instance or load balancer); the ingress rule above opens the port. localhost is the build container itself.",
			}
			notes = append(notes, loopbackWarning(s, "the build container")...)
			if s.caPEM != nil {
				notes = append(notes, "The buildspecs carry regcache's CA inline and write it to /etc/docker/certs.d/"+s.host+"/ca.crt: a CA certificate is not a secret.")
			}
			notes = append(notes,
				"The build image (provisioning phase) is pulled by CodeBuild before the buildspec runs, so no buildspec can redirect it: use a curated aws/codebuild/* image, move a Docker Hub build image to ECR Public (regcache rewrite buildspec.yml --to ecr-public turns node:21 into public.ecr.aws/docker/library/node:21), or to a private ECR repository, which CodeBuild pulls with the service role (ImagePullCredentialsType: SERVICE_ROLE).",
				fmt.Sprintf("FROM lines and docker pull/run in the buildspec can also name the cache directly: regcache rewrite . --to %s", s.host))
			notes = append(notes, mirrorLoginNotes(s, "dockerd", "the docker login at the end of the install phase.")...)
			return Plan{
				Snippets: []Snippet{
					{Title: "buildspec.yml: curated build image", Lang: "yaml", Body: curated},
					{Title: "buildspec.yml: custom build image", Lang: "yaml", Body: custom},
					{Title: "CloudFormation resources", Lang: "yaml", Body: cfn},
				},
				Notes: notes,
			}, nil
		},
	}
}

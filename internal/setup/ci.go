package setup

import (
	"fmt"
	"net"
	"strings"
)

// The CI targets print fragments to paste into pipeline definitions. A
// job that configures its own dockerd runs jobDockerd: everything it needs
// (the CA too) is in the script, since the job starts on a machine that
// has nothing of regcache's.

// jobDockerd is the shell script that points a job host's dockerd at
// regcache: the CA where dockerd looks for it, the mirror merged into
// daemon.json, a reload, a wait until dockerd reports the mirror (so the
// job fails instead of silently pulling from Docker Hub), and the login.
// sudo is "sudo " on runners that run jobs as a normal user and "" where
// the job runs as root.
func jobDockerd(s server, sudo, reload string) string {
	return jobCA(s, sudo) + jobMirror(s, sudo, reload) + jobLogin(s)
}

// jobMirror merges the mirror into daemon.json with jq (present on
// CodeBuild's curated, CircleCI's machine and GitHub's runner images),
// reloads dockerd and waits for it to report the mirror.
func jobMirror(s server, sudo, reload string) string {
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
		waitMirror(s),
	}, "\n") + "\n"
}

// jobCA writes regcache's CA where dockerd looks for a registry's CA,
// /etc/docker/certs.d/<host>/ca.crt. The certificate is inlined: a CA
// certificate is public, and this works on every CI system without a
// secret, a variable or a file in the repository.
func jobCA(s server, sudo string) string {
	if s.caPEM == nil {
		return ""
	}
	dir := "/etc/docker/certs.d/" + s.host
	return sudo + "mkdir -p " + dir + "\n" +
		sudo + "tee " + dir + "/ca.crt >/dev/null <<'EOF'\n" +
		strings.TrimRight(string(s.caPEM), "\n") + "\nEOF\n"
}

// waitMirror fails the job unless dockerd reports the mirror within 30 s:
// dockerd falls back to Docker Hub without an error when a mirror is
// missing, which would spend the budget the cache is there to save.
func waitMirror(s server) string {
	return fmt.Sprintf(`timeout 30 sh -c 'until docker info --format "{{.RegistryConfig.Mirrors}}" | grep -qF "%s"; do sleep 1; done'`, s.url())
}

// jobLogin logs the job's docker CLI in to regcache, for references that
// name it, with the password from the job's environment.
func jobLogin(s server) string {
	if s.login.user == "" {
		return ""
	}
	return dockerLogin(s, "") + "\n"
}

// dockerdFlags are the dockerd command-line flags for the mirror, for a
// dockerd that a job or a service starts itself.
func dockerdFlags(s server) []string {
	flags := []string{"--registry-mirror=" + s.url()}
	if s.insecure {
		flags = append(flags, "--insecure-registry="+s.host)
	}
	return flags
}

// yamlList is a flow sequence of double-quoted strings.
func yamlList(items []string) string {
	q := make([]string, len(items))
	for i, it := range items {
		q[i] = fmt.Sprintf("%q", it)
	}
	return "[" + strings.Join(q, ", ") + "]"
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

// internetNote is for CI systems whose own machines pull (CircleCI's
// docker executor, GitHub-hosted runners): the cache is then on the
// internet, and without logins it serves anyone.
func internetNote(s server, who string) string {
	if s.login.user == "" {
		return who + " reach the cache over the internet: a cache without client_auth then serves anyone, with regcache's upstream credentials. Give it client_auth and generate this output with --username; see \"An internet-facing cache\" in docs/ci-integration.md."
	}
	return who + " reach the cache over the internet: keep client_auth on and anonymous_registries empty. dockerd mirror pulls, which carry no regcache login, are then refused and dockerd falls back to Docker Hub, so there name the cache in references (regcache rewrite) and log in; see \"An internet-facing cache\" in docs/ci-integration.md."
}

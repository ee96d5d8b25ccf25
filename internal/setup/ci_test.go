package setup

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
	"gopkg.in/yaml.v3"
)

// TestCIOutput parses every snippet and file the CI targets print, for
// every variant, with the parser of its language (YAML, TOML, JSON), checks
// every shell script in them with sh -n, and checks what each CI system
// needs: the mirror, the CA carried into the job, the login from the
// job's secret, and nothing of the machine that ran setup.
func TestCIOutput(t *testing.T) {
	ca := string(mustRead(t, "testdata/ca.crt"))
	for _, v := range renderVariants() {
		for _, name := range []string{"codebuild", "circleci", "github-actions", "gitlab"} {
			t.Run(v.name+"/"+name, func(t *testing.T) {
				tg, _ := Lookup(name)
				p, out := render(t, tg, v.opts)
				s, err := v.opts.server()
				if err != nil {
					t.Fatal(err)
				}
				docs := map[string]*yaml.Node{}
				var tomls []map[string]any
				for _, sn := range p.Snippets {
					switch sn.Lang {
					case "yaml":
						var doc yaml.Node
						if err := yaml.Unmarshal([]byte(sn.Body), &doc); err != nil {
							t.Fatalf("%s does not parse as YAML: %v\n%s", sn.Title, err, sn.Body)
						}
						docs[sn.Title] = doc.Content[0]
					case "toml":
						var m map[string]any
						if err := toml.Unmarshal([]byte(sn.Body), &m); err != nil {
							t.Fatalf("%s does not parse as TOML: %v\n%s", sn.Title, err, sn.Body)
						}
						tomls = append(tomls, m)
					default:
						t.Errorf("%s: unknown language %q", sn.Title, sn.Lang)
					}
				}
				for _, f := range p.Files {
					b, _ := f.Merge(nil)
					if strings.HasSuffix(f.Path, ".json") && !json.Valid(b) {
						t.Errorf("%s is not JSON:\n%s", f.Path, b)
					}
				}
				var scripts []string
				for title, doc := range docs {
					for _, sc := range shellScripts(name, doc) {
						scripts = append(scripts, sc)
						if out, err := exec.Command("sh", "-n", "-c", sc).CombinedOutput(); err != nil {
							t.Errorf("%s: sh -n: %v: %s\n%s", title, err, out, sc)
						}
					}
				}
				if len(scripts) == 0 {
					t.Fatal("no shell script found in the output")
				}
				all := strings.Join(scripts, "\n")
				for _, want := range []string{s.url()} {
					if !strings.Contains(string(out), want) {
						t.Errorf("output lacks %s", want)
					}
				}
				// The CA reaches the job itself, never as a path of the
				// machine that ran setup.
				if s.caPEM != nil {
					if !strings.Contains(all, "/etc/docker/certs.d/"+s.host+"/ca.crt") || !strings.Contains(string(out), strings.TrimSpace(ca)[len("-----BEGIN CERTIFICATE-----\n"):][:40]) {
						t.Errorf("the CA is not written into the job")
					}
					if bytes.Contains(out, []byte("testdata")) {
						t.Errorf("output names the CA's path on this machine")
					}
				}
				if s.login.user != "" && (!strings.Contains(string(out), s.login.env) || (name != "github-actions" && !strings.Contains(all, "--password-stdin"))) {
					t.Errorf("no login from $%s", s.login.env)
				}
				for _, line := range strings.Split(all, "\n") {
					if strings.Contains(line, "docker login") && !strings.Contains(line, "--password-stdin") {
						t.Errorf("a docker login that does not read the password from stdin: %s", line)
					}
				}
				checkCI(t, name, s, docs, tomls)
			})
		}
	}
}

// checkCI checks what one CI system needs, in the parsed output.
func checkCI(t *testing.T, name string, s server, docs map[string]*yaml.Node, tomls []map[string]any) {
	t.Helper()
	get := func(title string, path ...string) []*yaml.Node {
		doc, ok := docs[title]
		if !ok {
			t.Fatalf("no snippet %q", title)
		}
		return query(doc, path...)
	}
	str := func(n []*yaml.Node) string {
		var parts []string
		for _, x := range n {
			parts = append(parts, x.Value)
		}
		return strings.Join(parts, "\n")
	}
	switch name {
	case "codebuild":
		curated := str(get("buildspec.yml: curated build image", "phases", "install", "commands", "*"))
		if !strings.Contains(curated, "pkill -HUP -x dockerd") {
			t.Error("the curated buildspec does not reload exactly dockerd")
		}
		custom := str(get("buildspec.yml: custom build image", "phases", "install", "commands", "*"))
		if !strings.Contains(custom, "nohup dockerd ") || !strings.Contains(custom, "--registry-mirror="+s.url()) {
			t.Errorf("the custom-image buildspec does not start dockerd with the mirror:\n%s", custom)
		}
		secret := get("buildspec.yml: curated build image", "env", "secrets-manager", s.login.env)
		if (len(secret) == 1) != (s.login.user != "") {
			t.Errorf("secrets-manager entry %v for login %q", secret, s.login.user)
		}
	case "circleci":
		auth := get(".circleci/config.yml: docker executor", "jobs", "test", "docker", "*", "auth", "password")
		if s.login.user != "" && (len(auth) != 2 || auth[0].Value != "$"+s.login.env) {
			t.Errorf("docker executor auth: %v", auth)
		}
		if s.login.user == "" && len(auth) != 0 {
			t.Error("auth: blocks for a cache without logins")
		}
		for _, img := range get(".circleci/config.yml: docker executor", "jobs", "test", "docker", "*", "image") {
			if !strings.HasPrefix(img.Value, s.host+"/docker.io/") {
				t.Errorf("docker executor image %s does not name the cache", img.Value)
			}
		}
		var steps []string
		for _, st := range get(".circleci/config.yml: setup_remote_docker", "jobs", "build", "steps", "*") {
			steps = append(steps, st.Value)
		}
		if !strings.Contains(strings.Join(steps, " "), "setup_remote_docker") {
			t.Error("no setup_remote_docker step")
		}
	case "github-actions":
		inline := get(".github/workflows/build.yml steps", "jobs", "build", "steps", "*", "with", "buildkitd-config-inline")
		if len(inline) != 1 {
			t.Fatalf("buildkitd-config-inline: %v", inline)
		}
		var bk map[string]any
		if err := toml.Unmarshal([]byte(inline[0].Value), &bk); err != nil {
			t.Fatalf("buildkitd-config-inline is not TOML: %v", err)
		}
		if got := fmt.Sprint(lookup(bk, "registry", "docker.io", "mirrors")); got != "["+s.host+"]" {
			t.Errorf("BuildKit mirrors = %s", got)
		}
		if s.caPEM != nil {
			if got := fmt.Sprint(lookup(bk, "registry", s.host, "ca")); got != "[/etc/docker/certs.d/"+s.host+"/ca.crt]" {
				t.Errorf("BuildKit ca = %s, want the file the first step writes", got)
			}
		}
		login := get(".github/workflows/build.yml steps", "jobs", "build", "steps", "*", "with", "password")
		creds := get(".github/workflows/test.yml job and service containers", "jobs", "test", "*", "credentials", "password")
		creds = append(creds, get(".github/workflows/test.yml job and service containers", "jobs", "test", "services", "*", "credentials", "password")...)
		if s.login.user != "" {
			want := "${{ secrets." + s.login.env + " }}"
			if len(login) != 1 || login[0].Value != want || len(creds) != 2 || creds[0].Value != want || creds[1].Value != want {
				t.Errorf("login-action %v, credentials %v", login, creds)
			}
		} else if len(login)+len(creds) != 0 {
			t.Error("logins for a cache without logins")
		}
	case "gitlab":
		for _, title := range []string{".gitlab-ci.yml: mirror per job", ".gitlab-ci.yml: with the runner configuration"} {
			if got := str(get(title, "build", "image")); got != "docker:29" {
				t.Errorf("%s: image %s", title, got)
			}
			if got := str(get(title, "build", "services", "*", "name")); got != "docker:29-dind" {
				t.Errorf("%s: service %s", title, got)
			}
			if got := str(get(title, "build", "variables", "DOCKER_TLS_CERTDIR")); got != "/certs" {
				t.Errorf("%s: DOCKER_TLS_CERTDIR %q", title, got)
			}
		}
		cmd := str(get(".gitlab-ci.yml: mirror per job", "build", "services", "*", "command", "*"))
		if !strings.Contains(cmd, "--registry-mirror="+s.url()) {
			t.Errorf("per-job dind command: %s", cmd)
		}
		if got := get(".gitlab-ci.yml: with the runner configuration", "build", "services", "*", "command"); len(got) != 0 {
			t.Error("the job for the runner configuration also gives --registry-mirror, which dockerd refuses with daemon.json")
		}
		if s.caPEM != nil {
			if got := str(get(".gitlab-ci.yml: mirror per job", "build", "services", "*", "variables", "REGCACHE_CA")); got != string(s.caPEM) {
				t.Errorf("REGCACHE_CA = %q", got)
			}
		}
		if len(tomls) != 1 {
			t.Fatalf("%d TOML snippets", len(tomls))
		}
		runners, _ := tomls[0]["runners"].([]any)
		if len(runners) != 1 {
			t.Fatalf("runners: %v", tomls[0])
		}
		docker, _ := runners[0].(map[string]any)["docker"].(map[string]any)
		vols := fmt.Sprint(docker["volumes"])
		if docker["privileged"] != true || !strings.Contains(vols, "/certs/client") || !strings.Contains(vols, "/etc/docker/daemon.json:ro") {
			t.Errorf("runner docker config: %v", docker)
		}
		if _, ok := docker["services"]; ok {
			t.Error("the runner config starts a dind service for every job")
		}
		if (s.caPEM != nil) != strings.Contains(vols, ":/etc/docker/certs.d:ro") {
			t.Errorf("CA volume: %s", vols)
		}
	}
}

// shellScripts returns the shell scripts of a parsed CI snippet.
func shellScripts(name string, doc *yaml.Node) []string {
	var nodes []*yaml.Node
	switch name {
	case "codebuild":
		nodes = query(doc, "phases", "*", "commands", "*")
	case "circleci":
		nodes = append(query(doc, "jobs", "*", "steps", "*", "run", "command"), query(doc, "jobs", "*", "steps", "*", "run")...)
	case "github-actions":
		nodes = query(doc, "jobs", "*", "steps", "*", "run")
	case "gitlab":
		nodes = query(doc, "*", "script", "*")
		for _, ep := range query(doc, "*", "services", "*", "entrypoint") {
			if len(ep.Content) == 4 && ep.Content[1].Value == "-c" {
				nodes = append(nodes, ep.Content[2])
			}
		}
	}
	var out []string
	for _, n := range nodes {
		if n.Kind == yaml.ScalarNode {
			out = append(out, n.Value)
		}
	}
	return out
}

// query returns the nodes at path below n; "*" is every item of a
// sequence or every value of a mapping.
func query(n *yaml.Node, path ...string) []*yaml.Node {
	if len(path) == 0 {
		return []*yaml.Node{n}
	}
	var next []*yaml.Node
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if path[0] == "*" || n.Content[i].Value == path[0] {
				next = append(next, n.Content[i+1])
			}
		}
	case yaml.SequenceNode:
		if path[0] == "*" {
			next = n.Content
		}
	}
	var out []*yaml.Node
	for _, c := range next {
		out = append(out, query(c, path[1:]...)...)
	}
	return out
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

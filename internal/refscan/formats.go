package refscan

import (
	"path"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// Format is the kind of file a path is scanned as.
type Format string

// Formats recognised by Classify.
const (
	FormatNone       Format = ""
	FormatDockerfile Format = "dockerfile"
	FormatCompose    Format = "compose"
	FormatHelm       Format = "helm-values"
	FormatGitLab     Format = "gitlab-ci"
	FormatCircleCI   Format = "circleci"
	FormatGitHub     Format = "github-actions"
	FormatCodeBuild  Format = "codebuild"
	// FormatKustomize is a kustomization file; its images entries replace
	// the images of the manifests it lists.
	FormatKustomize Format = "kustomization"
	// FormatYAML is any other YAML file; only documents that look like
	// Kubernetes objects (apiVersion + kind) are scanned.
	FormatYAML Format = "yaml"
)

// Classify decides from the path alone how a file is scanned. Names are
// matched case-insensitively; slash-separated paths are expected.
func Classify(p string) Format {
	p = strings.ReplaceAll(p, "\\", "/")
	base := strings.ToLower(path.Base(p))
	dir := strings.ToLower(path.Dir(p))
	isYAML := strings.HasSuffix(base, ".yml") || strings.HasSuffix(base, ".yaml")
	switch {
	case base == "kustomization.yaml" || base == "kustomization.yml" || base == "kustomization":
		return FormatKustomize
	case strings.HasPrefix(base, "dockerfile") || strings.HasSuffix(base, ".dockerfile") ||
		strings.HasPrefix(base, "containerfile"):
		if isYAML {
			return FormatNone
		}
		return FormatDockerfile
	case !isYAML:
		return FormatNone
	case base == ".gitlab-ci.yml" || strings.HasSuffix(base, ".gitlab-ci.yml"):
		return FormatGitLab
	case path.Base(dir) == ".circleci":
		return FormatCircleCI
	case strings.HasSuffix(dir, ".github/workflows"):
		return FormatGitHub
	case strings.HasPrefix(base, "buildspec"):
		return FormatCodeBuild
	case strings.HasPrefix(base, "docker-compose") || strings.HasPrefix(base, "compose"):
		return FormatCompose
	case strings.HasPrefix(base, "values"):
		return FormatHelm
	}
	return FormatYAML
}

// scanYAMLDoc dispatches one parsed YAML document to its format's walker.
func (s *yamlScanner) scanDoc(f Format, doc *yaml.Node) {
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		doc = doc.Content[0]
	}
	switch f {
	case FormatCompose:
		s.compose(doc)
	case FormatHelm:
		s.helm(doc)
	case FormatGitLab:
		s.gitlab(doc)
	case FormatCircleCI:
		s.circleci(doc)
	case FormatGitHub:
		s.github(doc)
	case FormatCodeBuild:
		s.codebuild(doc)
	case FormatKustomize:
		s.kustomize(doc)
	case FormatYAML:
		if mapGet(doc, "apiVersion") != nil && mapGet(doc, "kind") != nil {
			s.kubernetes(doc)
		}
	}
}

func (s *yamlScanner) compose(root *yaml.Node) {
	services := mapGet(root, "services")
	for _, kv := range mapPairs(services) {
		s.composeService(services, kv[1], 0)
	}
}

// composeService counts the image one service pulls: its own image:, or,
// without one, the image of the service it extends, in this file or in
// another (which is then reported where it is written).
func (s *yamlScanner) composeService(services, svc *yaml.Node, depth int) {
	if mapGet(svc, "build") != nil {
		// With build:, image: names the image compose builds and tags;
		// it is not pulled.
		return
	}
	n := deref(mapGet(svc, "image"))
	if v, ok := scalar(n); ok && strings.TrimSpace(v) != "" {
		s.add(n, 0, v, "compose image", 1, composeDefaults(v))
		return
	}
	ext := deref(mapGet(svc, "extends"))
	if ext == nil {
		return
	}
	name, ok := scalar(ext)
	file := ""
	if !ok {
		name, _ = scalar(mapGet(ext, "service"))
		file, _ = scalar(mapGet(ext, "file"))
	}
	if name == "" || depth > 8 {
		return
	}
	target, targetServices := s, services
	if file != "" && filepath.Clean(filepath.Join(filepath.Dir(s.file), file)) == filepath.Clean(s.file) {
		file = "" // this same file, named
	}
	if file != "" {
		ef := s.external(file)
		if ef.err != "" {
			s.problem(ext, "compose extends", file, ef.err)
			return
		}
		target, targetServices = ef.scanner, mapGet(ef.root, "services")
	}
	base := mapGet(targetServices, name)
	if base == nil {
		where := "this file"
		if file != "" {
			where = file
		}
		s.problem(ext, "compose extends", name, "extends service "+name+", which "+where+" does not define")
		return
	}
	target.composeService(targetServices, base, depth+1)
}

// kustomize reports the images entries of a kustomization. An entry names
// the image its manifests pull, so it is rewritten there (newName), never
// in the manifests. How many containers it applies to is counted by Scan,
// which sees the manifests.
func (s *yamlScanner) kustomize(root *yaml.Node) {
	images := deref(mapGet(root, "images"))
	if images == nil || images.Kind != yaml.SequenceNode {
		return
	}
	for _, e := range images.Content {
		e = deref(e)
		nameNode := deref(mapGet(e, "name"))
		name, ok := scalar(nameNode)
		if !ok || name == "" {
			continue
		}
		newNameNode := deref(mapGet(e, "newName"))
		newName, hasNew := scalar(newNameNode)
		newTag, _ := scalar(mapGet(e, "newTag"))
		digest, _ := scalar(mapGet(e, "digest"))
		orig := "name: " + name
		ref, target := name, nameNode
		if hasNew {
			orig += ", newName: " + newName
			ref, target = newName, newNameNode
		}
		repo := ref
		if newTag != "" {
			orig += ", newTag: " + newTag
			ref += ":" + newTag
		}
		if digest != "" {
			orig += ", digest: " + digest
			ref += "@" + digest
		}
		s.add(target, 0, repo, "kustomize image", 0, func(r *Ref, off int) {
			r.Original = orig
			r.kustomizeName = name
			n := r.resolveLiteral(ref)
			if newTag == "" && digest == "" && r.Problem == "" {
				r.Note = "tag as written in the manifests"
				r.Normalized = strings.TrimSuffix(r.Normalized, ":latest")
			}
			switch {
			case r.Problem != "" || n < len(repo) || off < 0:
			case hasNew:
				r.Span = &Span{Start: off, End: off + len(repo), Text: repo}
			case e.Style&yaml.FlowStyle != 0:
				r.Problem = "flow-style images entry; add newName to it by hand"
			default:
				r.Span = s.insertAfterLine(nameNode.Line, keyColumn(e, "name"), "newName: %s", name)
			}
		})
	}
}

// kubernetes reports the image of every container of a Kubernetes object,
// wherever the pod spec sits (Deployment, CronJob jobTemplate, ...). Only
// container lists are looked at: "image" keys elsewhere (labels,
// annotations, custom resources) are not pulled by the kubelet.
func (s *yamlScanner) kubernetes(n *yaml.Node) {
	n = deref(n)
	if n == nil {
		return
	}
	switch n.Kind {
	case yaml.MappingNode:
		for _, kv := range mapPairs(n) {
			switch kv[0].Value {
			case "containers", "initContainers", "ephemeralContainers":
				if seq := deref(kv[1]); seq != nil && seq.Kind == yaml.SequenceNode {
					for _, c := range seq.Content {
						s.image(mapGet(c, "image"), "kubernetes image", 1)
					}
					continue
				}
			}
			s.kubernetes(kv[1])
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			s.kubernetes(c)
		}
	}
}

// helm reports "image:" strings and image maps (registry/repository/tag/
// digest, the common chart convention) anywhere in a values file.
func (s *yamlScanner) helm(n *yaml.Node) {
	n = deref(n)
	if n == nil {
		return
	}
	switch n.Kind {
	case yaml.MappingNode:
		if s.helmImageMap(n) {
			return
		}
		for _, kv := range mapPairs(n) {
			if kv[0].Value == "image" {
				if _, ok := scalar(kv[1]); ok {
					s.image(kv[1], "helm image", 1)
					continue
				}
			}
			s.helm(kv[1])
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			s.helm(c)
		}
	}
}

// helmImageMap handles {repository, tag[, registry][, digest]}. Only the
// repository value is rewritten, and only when there is no separate registry
// key: how a chart joins registry and repository is up to its templates.
func (s *yamlScanner) helmImageMap(m *yaml.Node) bool {
	repoNode := mapGet(m, "repository")
	repo, ok := scalar(repoNode)
	if !ok || mapGet(m, "tag") == nil || strings.Contains(repo, "://") || repo == "" {
		return false
	}
	tag, _ := scalar(mapGet(m, "tag"))
	digest, _ := scalar(mapGet(m, "digest"))
	registry, hasRegistry := scalar(mapGet(m, "registry"))
	full := repo
	if hasRegistry && registry != "" {
		full = registry + "/" + repo
	}
	orig := "repository: " + repo
	if tag != "" {
		orig += ", tag: " + tag
	}
	if digest != "" {
		orig += ", digest: " + digest
	}
	if hasRegistry {
		orig = "registry: " + registry + ", " + orig
	}
	s.add(deref(repoNode), 0, repo, "helm repository+tag", 1, func(r *Ref, off int) {
		ref := full
		if tag != "" {
			ref += ":" + tag
		}
		if digest != "" {
			ref += "@" + digest
		}
		r.Original = orig
		n := r.resolveLiteral(ref)
		if tag == "" && r.Problem == "" {
			r.Note = "empty tag: the chart's appVersion is used"
			r.Normalized = strings.TrimSuffix(r.Normalized, ":latest")
		}
		switch {
		case hasRegistry:
			if r.Problem == "" {
				r.Problem = "registry and repository are separate keys; rewrite by hand"
			}
		case n >= len(repo) && !hasTemplate(repo) && off >= 0:
			// Only the repository value is replaced; the tag stays.
			r.Span = &Span{Start: off, End: off + len(repo), Text: repo}
		}
	})
	return true
}

// gitlabReserved are top-level keywords of .gitlab-ci.yml that are not jobs.
var gitlabReserved = map[string]bool{
	"image": true, "services": true, "stages": true, "types": true, "before_script": true,
	"after_script": true, "variables": true, "cache": true, "include": true, "default": true,
	"workflow": true, "spec": true,
}

func (s *yamlScanner) gitlab(root *yaml.Node) {
	jobs := map[string]*yaml.Node{}
	var concrete []string
	for _, kv := range mapPairs(root) {
		name := kv[0].Value
		if gitlabReserved[name] || deref(kv[1]) == nil || deref(kv[1]).Kind != yaml.MappingNode {
			continue
		}
		jobs[name] = kv[1]
		if !strings.HasPrefix(name, ".") {
			concrete = append(concrete, name)
		}
	}
	// weight of a hidden job: concrete jobs that extend it, transitively.
	extends := func(job *yaml.Node) []string {
		e := deref(mapGet(job, "extends"))
		if v, ok := scalar(e); ok {
			return []string{v}
		}
		var out []string
		if e != nil && e.Kind == yaml.SequenceNode {
			for _, c := range e.Content {
				if v, ok := scalar(c); ok {
					out = append(out, v)
				}
			}
		}
		return out
	}
	users := map[string]int{}
	for _, name := range concrete {
		visited := map[string]bool{}
		var walk func(string)
		walk = func(n string) {
			for _, p := range extends(jobs[n]) {
				if !visited[p] && jobs[p] != nil {
					visited[p] = true
					users[p]++
					walk(p)
				}
			}
		}
		walk(name)
	}
	withOwn := func(key string) int {
		n := 0
		for _, name := range concrete {
			if mapGet(jobs[name], key) == nil {
				n++
			}
		}
		return n
	}
	job := func(n *yaml.Node, weight int) {
		s.gitlabImage(mapGet(n, "image"), "gitlab image", weight)
		if svcs := deref(mapGet(n, "services")); svcs != nil && svcs.Kind == yaml.SequenceNode {
			for _, svc := range svcs.Content {
				s.gitlabImage(svc, "gitlab service", weight)
			}
		}
		for _, k := range []string{"before_script", "script", "after_script"} {
			s.script(mapGet(n, k), "gitlab script", weight)
		}
	}
	for _, k := range []string{"before_script", "script", "after_script"} {
		s.script(mapGet(root, k), "gitlab script", len(concrete))
	}
	s.gitlabImage(mapGet(root, "image"), "gitlab image", withOwn("image"))
	if svcs := deref(mapGet(root, "services")); svcs != nil && svcs.Kind == yaml.SequenceNode {
		for _, svc := range svcs.Content {
			s.gitlabImage(svc, "gitlab service", withOwn("services"))
		}
	}
	if def := mapGet(root, "default"); def != nil {
		s.gitlabImage(mapGet(def, "image"), "gitlab image", withOwn("image"))
		if svcs := deref(mapGet(def, "services")); svcs != nil && svcs.Kind == yaml.SequenceNode {
			for _, svc := range svcs.Content {
				s.gitlabImage(svc, "gitlab service", withOwn("services"))
			}
		}
		for _, k := range []string{"before_script", "after_script"} {
			s.script(mapGet(def, k), "gitlab script", len(concrete))
		}
	}
	for _, kv := range mapPairs(root) {
		if n, ok := jobs[kv[0].Value]; ok {
			w := 1
			if strings.HasPrefix(kv[0].Value, ".") {
				w = users[kv[0].Value]
			}
			job(n, w)
		}
	}
}

// gitlabImage accepts "image: name" and "image: {name: ...}".
func (s *yamlScanner) gitlabImage(n *yaml.Node, kind string, weight int) {
	n = deref(n)
	if n == nil {
		return
	}
	if n.Kind == yaml.MappingNode {
		n = mapGet(n, "name")
	}
	s.image(n, kind, weight)
}

func (s *yamlScanner) circleci(root *yaml.Node) {
	executorUsers := map[string]int{}
	for _, kv := range mapPairs(mapGet(root, "jobs")) {
		e := deref(mapGet(kv[1], "executor"))
		if v, ok := scalar(e); ok {
			executorUsers[v]++
		} else if v, ok := scalar(mapGet(e, "name")); ok {
			executorUsers[v]++
		}
	}
	docker := func(n *yaml.Node, weight int) {
		seq := deref(mapGet(n, "docker"))
		if seq == nil || seq.Kind != yaml.SequenceNode {
			return
		}
		for i, c := range seq.Content {
			kind := "circleci docker image"
			if i > 0 {
				kind = "circleci docker service"
			}
			s.image(mapGet(c, "image"), kind, weight)
		}
	}
	for _, kv := range mapPairs(mapGet(root, "executors")) {
		docker(kv[1], executorUsers[kv[0].Value])
	}
	for _, kv := range mapPairs(mapGet(root, "jobs")) {
		docker(kv[1], 1)
		if steps := deref(mapGet(kv[1], "steps")); steps != nil && steps.Kind == yaml.SequenceNode {
			for _, st := range steps.Content {
				run := mapGet(st, "run")
				if _, ok := scalar(run); !ok {
					run = mapGet(run, "command")
				}
				s.script(run, "circleci run", 1)
			}
		}
	}
}

func (s *yamlScanner) github(root *yaml.Node) {
	for _, kv := range mapPairs(mapGet(root, "jobs")) {
		job := kv[1]
		weight := matrixSize(mapGet(mapGet(job, "strategy"), "matrix"))
		c := deref(mapGet(job, "container"))
		if c != nil && c.Kind == yaml.MappingNode {
			c = mapGet(c, "image")
		}
		s.image(c, "github container", weight)
		for _, svc := range mapPairs(mapGet(job, "services")) {
			s.image(mapGet(svc[1], "image"), "github service", weight)
		}
		steps := deref(mapGet(job, "steps"))
		if steps == nil || steps.Kind != yaml.SequenceNode {
			continue
		}
		for _, st := range steps.Content {
			if u := deref(mapGet(st, "uses")); u != nil {
				if v, ok := scalar(u); ok && strings.HasPrefix(v, "docker://") {
					s.add(u, len("docker://"), strings.TrimPrefix(v, "docker://"), "github uses docker://", weight, nil)
				}
			}
			s.script(mapGet(st, "run"), "github run", weight)
		}
	}
}

// matrixSize estimates how many jobs a strategy.matrix expands to: the
// product of its list lengths, plus include entries.
func matrixSize(m *yaml.Node) int {
	n := 1
	for _, kv := range mapPairs(m) {
		v := deref(kv[1])
		if v == nil || v.Kind != yaml.SequenceNode {
			continue
		}
		switch kv[0].Value {
		case "include":
			if n == 1 && len(mapPairs(m)) == 1 {
				n = 0
			}
			n += len(v.Content)
		case "exclude":
		default:
			n *= len(v.Content)
		}
	}
	if n < 1 {
		n = 1
	}
	return n
}

func (s *yamlScanner) codebuild(root *yaml.Node) {
	// All phases run in one build with one docker daemon: an image pulled
	// in pre_build is already there in build.
	// In a batch, every build of build-list/build-graph that does not name
	// its own buildspec runs these phases again.
	batch := mapGet(root, "batch")
	runs := 0
	for _, key := range []string{"build-list", "build-graph"} {
		if l := deref(mapGet(batch, key)); l != nil && l.Kind == yaml.SequenceNode {
			for _, b := range l.Content {
				if mapGet(b, "buildspec") == nil {
					runs++
				}
			}
		}
	}
	if runs == 0 {
		runs = 1
	}
	pulled := map[string]bool{}
	for _, ph := range mapPairs(mapGet(root, "phases")) {
		s.scriptSeen(mapGet(ph[1], "commands"), "codebuild command", runs, pulled)
		s.scriptSeen(mapGet(mapGet(ph[1], "finally"), "commands"), "codebuild command", runs, pulled)
	}
	envImage := func(env *yaml.Node) {
		img := deref(mapGet(env, "image"))
		if img == nil {
			return
		}
		imgs := []*yaml.Node{img}
		if img.Kind == yaml.SequenceNode {
			imgs = img.Content
		}
		for _, i := range imgs {
			v, ok := scalar(i)
			if !ok {
				continue
			}
			if strings.HasPrefix(v, "aws/codebuild/") {
				// CodeBuild curated images are not registry references.
				s.add(deref(i), 0, v, "codebuild build image", 1, func(r *Ref, _ int) {
					r.Registry = "codebuild (curated)"
					r.Note = "AWS CodeBuild curated image, pulled by CodeBuild itself"
				})
				continue
			}
			s.image(i, "codebuild build image", 1)
		}
	}
	for _, key := range []string{"build-list", "build-graph"} {
		if l := deref(mapGet(batch, key)); l != nil && l.Kind == yaml.SequenceNode {
			for _, b := range l.Content {
				envImage(mapGet(b, "env"))
			}
		}
	}
	matrix := mapGet(batch, "build-matrix")
	envImage(mapGet(mapGet(matrix, "static"), "env"))
	envImage(mapGet(mapGet(matrix, "dynamic"), "env"))
}

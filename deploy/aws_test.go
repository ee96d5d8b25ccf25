package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/regcache/regcache/internal/config"
)

const (
	cfnTemplate = "aws/regcache.yaml"
	// rainModule is the rain release .ci/deps installs; its source ships the
	// CloudFormation resource provider schemas the template is checked
	// against (internal/aws/cfn/schemas), the ones rain itself embeds.
	rainModule = "github.com/aws-cloudformation/rain@v1.24.4"
)

// pseudoParameters are the names !Ref and ${} resolve besides the
// template's own parameters and resources.
var pseudoParameters = []string{"AWS::AccountId", "AWS::NotificationARNs", "AWS::NoValue", "AWS::Partition",
	"AWS::Region", "AWS::StackId", "AWS::StackName", "AWS::URLSuffix"}

// TestCloudFormationTemplate validates deploy/aws/regcache.yaml: rain reads
// it (rain fmt --verify), every resource and property exists in AWS's
// resource schemas with the right shape and every required property, every
// !Ref, !GetAtt and ${} resolves, and the container runs a config that
// regcache's own loader accepts, with its secrets, store, port and server
// URL wired to the rest of the template.
func TestCloudFormationTemplate(t *testing.T) {
	rain := requireTool(t, "rain")
	if out, err := run(t, ".", rain, "fmt", "--verify", cfnTemplate); err != nil {
		t.Fatalf("rain fmt --verify %s: %v\n%s", cfnTemplate, err, out)
	}
	tmpl := loadTemplate(t, cfnTemplate)
	v := newSchemaValidator(t)
	for _, e := range append(v.validate(tmpl), v.checkReferences(tmpl)...) {
		t.Error(e)
	}
	checkRegcacheContainer(t, tmpl)
}

// The validator finds what a deploy would reject.
func TestCloudFormationValidatorCatchesMistakes(t *testing.T) {
	orig, err := os.ReadFile(cfnTemplate)
	if err != nil {
		t.Fatal(err)
	}
	v := newSchemaValidator(t)
	for _, tc := range []struct{ name, old, new, want string }{
		{"misspelt property", "ReadonlyRootFilesystem: true", "ReadOnlyRootFilesystem: true", "ReadOnlyRootFilesystem: not a property"},
		{"unknown resource type", "Type: AWS::EFS::AccessPoint", "Type: AWS::EFS::AccessPt", "AWS::EFS::AccessPt"},
		{"missing required property", "      GroupDescription: regcache, reachable only from the CodeBuild projects\n", "", "GroupDescription"},
		{"list where a scalar goes", "LaunchType: FARGATE", "LaunchType: [FARGATE]", "LaunchType"},
		{"value outside the enum", "LaunchType: FARGATE", "LaunchType: LAMBDA", "LAMBDA"},
		{"Ref to nothing", "FileSystemId: !Ref FileSystem", "FileSystemId: !Ref FileSystm", "FileSystm"},
		{"GetAtt of an unknown attribute", "!GetAtt FileSystem.Arn", "!GetAtt FileSystem.Nope", "FileSystem.Nope"},
		{"Sub of nothing", "${NamespaceName}:${Port}", "${NamespaceName}:${Prot}", "Prot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			broken := strings.Replace(string(orig), tc.old, tc.new, 1)
			if broken == string(orig) {
				t.Fatalf("%q is not in the template", tc.old)
			}
			p := filepath.Join(t.TempDir(), "t.yaml")
			os.WriteFile(p, []byte(broken), 0o644)
			errs := append(v.validate(loadTemplate(t, p)), v.checkReferences(loadTemplate(t, p))...)
			if !slices.ContainsFunc(errs, func(e string) bool { return strings.Contains(e, tc.want) }) {
				t.Errorf("no error names %q; got %q", tc.want, errs)
			}
		})
	}
}

// template is a CloudFormation template with the short-form intrinsics
// (!Ref, !Sub, ...) turned into their long form ({"Ref": ...}).
type template struct {
	Parameters map[string]map[string]any
	Resources  map[string]resource
	Outputs    map[string]map[string]any
}

type resource struct {
	Type       string
	Properties map[string]any
	DependsOn  any
}

func loadTemplate(t *testing.T, path string) template {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	raw, err := json.Marshal(longForm(&n))
	if err != nil {
		t.Fatal(err)
	}
	var tmpl template
	if err := json.Unmarshal(raw, &tmpl); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return tmpl
}

// longForm converts a YAML node to plain values, rewriting !Ref X as
// {"Ref": X}, !GetAtt A.B as {"Fn::GetAtt": [A, B]} and !Fn X as
// {"Fn::Fn": X}.
func longForm(n *yaml.Node) any {
	var v any
	switch n.Kind {
	case yaml.DocumentNode:
		return longForm(n.Content[0])
	case yaml.MappingNode:
		m := map[string]any{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			m[n.Content[i].Value] = longForm(n.Content[i+1])
		}
		v = m
	case yaml.SequenceNode:
		l := []any{}
		for _, c := range n.Content {
			l = append(l, longForm(c))
		}
		v = l
	case yaml.AliasNode:
		return longForm(n.Alias)
	default:
		var s any
		_ = n.Decode(&s)
		v = s
	}
	switch tag := n.Tag; {
	case tag == "!Ref":
		return map[string]any{"Ref": v}
	case tag == "!GetAtt":
		if s, ok := v.(string); ok {
			a, b, _ := strings.Cut(s, ".")
			v = []any{a, b}
		}
		return map[string]any{"Fn::GetAtt": v}
	case strings.HasPrefix(tag, "!") && !strings.HasPrefix(tag, "!!"):
		return map[string]any{"Fn::" + tag[1:]: v}
	}
	return v
}

// intrinsic reports whether v is a function call such as {"Ref": ...}.
func intrinsic(v any) (string, any, bool) {
	m, ok := v.(map[string]any)
	if !ok || len(m) != 1 {
		return "", nil, false
	}
	for k, arg := range m {
		if k == "Ref" || strings.HasPrefix(k, "Fn::") {
			return k, arg, true
		}
	}
	return "", nil, false
}

// schemaValidator checks resources against AWS's resource provider schemas
// as rain ships them.
type schemaValidator struct {
	dir     string
	schemas map[string]map[string]any
}

func newSchemaValidator(t *testing.T) *schemaValidator {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", rainModule).Output()
	if err != nil {
		t.Fatalf("go mod download %s (the rain .ci/deps installs): %v", rainModule, err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("go mod download %s: %v %s", rainModule, err, out)
	}
	dir := filepath.Join(mod.Dir, "internal", "aws", "cfn", "schemas")
	if _, err := os.Stat(filepath.Join(dir, "aws", "ecs", "taskdefinition.json")); err != nil {
		t.Fatalf("%s has no resource schemas: %v", rainModule, err)
	}
	return &schemaValidator{dir: dir, schemas: map[string]map[string]any{}}
}

func (v *schemaValidator) schema(typ string) (map[string]any, error) {
	if s, ok := v.schemas[typ]; ok {
		return s, nil
	}
	b, err := os.ReadFile(filepath.Join(v.dir, strings.ToLower(strings.ReplaceAll(typ, "::", "/"))+".json"))
	if err != nil {
		return nil, fmt.Errorf("%s is not a CloudFormation resource type", typ)
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	v.schemas[typ] = s
	return s, nil
}

func (v *schemaValidator) validate(tmpl template) []string {
	var errs []string
	for _, name := range sortedKeys(tmpl.Resources) {
		r := tmpl.Resources[name]
		s, err := v.schema(r.Type)
		if err != nil {
			errs = append(errs, fmt.Sprintf("Resources.%s: %v", name, err))
			continue
		}
		props := map[string]any{}
		for k, p := range r.Properties {
			props[k] = p
		}
		errs = append(errs, checkValue(s, s, props, "Resources."+name+".Properties")...)
	}
	return errs
}

// checkValue checks val against the schema node sch: names, required keys,
// structure (scalar, list, object) and enums. An intrinsic function stands
// for any value; CloudFormation converts between scalar types itself.
func checkValue(root, sch map[string]any, val any, at string) []string {
	if _, _, ok := intrinsic(val); ok {
		return nil
	}
	if ref, ok := sch["$ref"].(string); ok {
		def, _ := root["definitions"].(map[string]any)[strings.TrimPrefix(ref, "#/definitions/")].(map[string]any)
		if def == nil {
			return nil
		}
		return checkValue(root, def, val, at)
	}
	for _, key := range []string{"oneOf", "anyOf"} {
		if alts, ok := sch[key].([]any); ok {
			var first []string
			for _, a := range alts {
				am, _ := a.(map[string]any)
				merged := map[string]any{}
				for k, x := range sch {
					if k != key {
						merged[k] = x
					}
				}
				for k, x := range am {
					merged[k] = x
				}
				errs := checkValue(root, merged, val, at)
				if len(errs) == 0 {
					return nil
				}
				if first == nil {
					first = errs
				}
			}
			return first
		}
	}
	types := map[string]bool{}
	switch ty := sch["type"].(type) {
	case string:
		types[ty] = true
	case []any:
		for _, x := range ty {
			types[fmt.Sprint(x)] = true
		}
	}
	if _, ok := sch["properties"]; ok {
		types["object"] = true
	}
	switch val := val.(type) {
	case map[string]any:
		if len(types) > 0 && !types["object"] {
			return []string{fmt.Sprintf("%s: an object where the schema wants %v", at, keys(types))}
		}
		props, _ := sch["properties"].(map[string]any)
		var errs []string
		required, _ := sch["required"].([]any)
		for _, req := range required {
			if _, ok := val[fmt.Sprint(req)]; !ok {
				errs = append(errs, fmt.Sprintf("%s: required property %s missing", at, req))
			}
		}
		if props == nil {
			return errs
		}
		for _, k := range sortedKeys(val) {
			ps, ok := props[k].(map[string]any)
			if !ok {
				if sch["additionalProperties"] == false {
					errs = append(errs, fmt.Sprintf("%s.%s: not a property (want one of %s)", at, k, strings.Join(sortedKeys(props), ", ")))
				}
				continue
			}
			errs = append(errs, checkValue(root, ps, val[k], at+"."+k)...)
		}
		return errs
	case []any:
		if len(types) > 0 && !types["array"] {
			return []string{fmt.Sprintf("%s: a list where the schema wants %v", at, keys(types))}
		}
		items, _ := sch["items"].(map[string]any)
		var errs []string
		for i, x := range val {
			if items != nil {
				errs = append(errs, checkValue(root, items, x, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
		return errs
	default:
		if types["object"] || types["array"] && !types["string"] {
			return []string{fmt.Sprintf("%s: a scalar where the schema wants %v", at, keys(types))}
		}
		if enum, ok := sch["enum"].([]any); ok {
			for _, e := range enum {
				if fmt.Sprint(e) == fmt.Sprint(val) {
					return nil
				}
			}
			return []string{fmt.Sprintf("%s: %v is not one of %v", at, val, enum)}
		}
	}
	return nil
}

// checkReferences resolves every Ref, GetAtt, ${} and DependsOn.
func (v *schemaValidator) checkReferences(tmpl template) []string {
	var errs []string
	names := map[string]bool{}
	for _, p := range pseudoParameters {
		names[p] = true
	}
	for p := range tmpl.Parameters {
		names[p] = true
	}
	for r := range tmpl.Resources {
		names[r] = true
	}
	used := map[string]bool{}
	attrOK := func(res, attr string) bool {
		r, ok := tmpl.Resources[res]
		return ok && v.hasAttr(r.Type, attr)
	}
	var walk func(v any, at string)
	walk = func(v any, at string) {
		if fn, arg, ok := intrinsic(v); ok {
			switch fn {
			case "Ref":
				name, _ := arg.(string)
				used[name] = true
				if !names[name] {
					errs = append(errs, fmt.Sprintf("%s: !Ref %s names no parameter, resource or pseudo parameter", at, name))
				}
			case "Fn::GetAtt":
				l, _ := arg.([]any)
				if len(l) != 2 || !attrOK(fmt.Sprint(l[0]), fmt.Sprint(l[1])) {
					errs = append(errs, fmt.Sprintf("%s: !GetAtt %v.%v is not an attribute of a resource here", at, l[0], l[1]))
				}
			case "Fn::Sub":
				str, _ := arg.(string)
				vars := map[string]any{}
				if l, ok := arg.([]any); ok && len(l) == 2 {
					str, _ = l[0].(string)
					vars, _ = l[1].(map[string]any)
					walk(l[1], at)
				}
				for _, m := range regexp.MustCompile(`\$\{([^!}][^}]*)\}`).FindAllStringSubmatch(str, -1) {
					name, attr, dotted := strings.Cut(m[1], ".")
					if _, ok := vars[m[1]]; ok {
						continue
					}
					used[name] = true
					switch {
					case dotted && !strings.HasPrefix(name, "AWS::"):
						if !attrOK(name, attr) {
							errs = append(errs, fmt.Sprintf("%s: ${%s} is not an attribute of a resource here", at, m[1]))
						}
					case !names[m[1]]:
						errs = append(errs, fmt.Sprintf("%s: ${%s} names no parameter, resource or pseudo parameter", at, m[1]))
					}
				}
				return
			}
			walk(arg, at)
			return
		}
		switch v := v.(type) {
		case map[string]any:
			for _, k := range sortedKeys(v) {
				walk(v[k], at+"."+k)
			}
		case []any:
			for i, x := range v {
				walk(x, fmt.Sprintf("%s[%d]", at, i))
			}
		}
	}
	for _, name := range sortedKeys(tmpl.Resources) {
		r := tmpl.Resources[name]
		walk(r.Properties, "Resources."+name)
		deps := []any{r.DependsOn}
		if l, ok := r.DependsOn.([]any); ok {
			deps = l
		}
		for _, d := range deps {
			if d != nil && tmpl.Resources[fmt.Sprint(d)].Type == "" {
				errs = append(errs, fmt.Sprintf("Resources.%s.DependsOn: %v is not a resource", name, d))
			}
		}
	}
	for _, name := range sortedKeys(tmpl.Outputs) {
		walk(tmpl.Outputs[name], "Outputs."+name)
	}
	for p := range tmpl.Parameters {
		if !used[p] {
			errs = append(errs, fmt.Sprintf("Parameters.%s is never used", p))
		}
	}
	return errs
}

// hasAttr says whether typ's schema lists attr among its read-only
// properties, which are what !GetAtt returns.
func (v *schemaValidator) hasAttr(typ, attr string) bool {
	s, err := v.schema(typ)
	if err != nil || attr == "" {
		return false
	}
	ro, _ := s["readOnlyProperties"].([]any)
	return slices.Contains(ro, any("/properties/"+strings.ReplaceAll(attr, ".", "/")))
}

// checkRegcacheContainer: the container's config, as ECS will set it, loads
// with regcache's config loader, and the rest of the template agrees with
// it.
func checkRegcacheContainer(t *testing.T, tmpl template) {
	t.Helper()
	td := tmpl.Resources["TaskDefinition"].Properties
	var c map[string]any
	for _, x := range td["ContainerDefinitions"].([]any) {
		if m := x.(map[string]any); m["Name"] == "regcache" {
			c = m
		}
	}
	if c == nil {
		t.Fatal("no container named regcache in the task definition")
	}
	// Parameters take their defaults; those without one get sample values.
	values := map[string]string{"DockerHubUsername": "ci-bot", "AWS::Region": "eu-west-1", "AWS::StackName": "ci-cache"}
	for name, p := range tmpl.Parameters {
		if d, ok := p["Default"]; ok {
			values[name] = fmt.Sprint(d)
		}
	}
	sub := func(v any) string {
		_, arg, _ := intrinsic(v)
		s, _ := arg.(string)
		return regexp.MustCompile(`\$\{([^}]+)\}`).ReplaceAllStringFunc(s, func(m string) string {
			return values[m[2:len(m)-1]]
		})
	}
	env := map[string]any{}
	for _, e := range c["Environment"].([]any) {
		m := e.(map[string]any)
		env[m["Name"].(string)] = m["Value"]
	}
	text := sub(env["REGCACHE_CONFIG_YAML"])
	cfg, err := config.Parse([]byte(text), "REGCACHE_CONFIG_YAML")
	if err != nil {
		t.Fatalf("the container's config does not load: %v\n%s", err, text)
	}
	// password_env names a variable ECS injects from Secrets Manager.
	secrets := map[string]any{}
	for _, s := range c["Secrets"].([]any) {
		m := s.(map[string]any)
		secrets[m["Name"].(string)] = m["ValueFrom"]
	}
	for name, r := range cfg.Registries {
		if a := r.Auth; a != nil {
			if a.PasswordEnv == "" || a.Password != "" {
				t.Errorf("registries.%s.auth: want the password from password_env, not in the template", name)
			}
			if _, ok := secrets[a.PasswordEnv]; !ok {
				t.Errorf("registries.%s.auth.password_env %s is not among the container's Secrets %v", name, a.PasswordEnv, sortedKeys(secrets))
			}
		}
	}
	if d := cfg.Registries["docker.io"].Auth; d == nil || d.Username != values["DockerHubUsername"] {
		t.Errorf("docker.io's login is not DockerHubUsername's")
	}
	if fn, arg, _ := intrinsic(secrets["DOCKERHUB_TOKEN"]); fn != "Ref" || arg != "DockerHubTokenSecretArn" {
		t.Errorf("DOCKERHUB_TOKEN comes from %v, want the DockerHubTokenSecretArn secret", secrets["DOCKERHUB_TOKEN"])
	}
	// The store is the EFS volume, the port the one mapped and admitted.
	mp := c["MountPoints"].([]any)[0].(map[string]any)
	if mp["ContainerPath"] != cfg.Storage.Root || mp["SourceVolume"] != td["Volumes"].([]any)[0].(map[string]any)["Name"] {
		t.Errorf("storage.root %s is not the mounted EFS volume %v", cfg.Storage.Root, mp)
	}
	if _, port, _ := strings.Cut(cfg.Listen, ":"); port != values["Port"] {
		t.Errorf("listen %s is not the Port parameter %s", cfg.Listen, values["Port"])
	}
	if c["ReadonlyRootFilesystem"] != true {
		t.Error("the container's root filesystem is writable")
	}
	// Only the CodeBuild projects' security group may connect.
	for _, rule := range tmpl.Resources["ServiceSecurityGroup"].Properties["SecurityGroupIngress"].([]any) {
		m := rule.(map[string]any)
		if fn, arg, _ := intrinsic(m["SourceSecurityGroupId"]); fn != "Ref" || arg != "CodeBuildSecurityGroupId" || m["CidrIp"] != nil {
			t.Errorf("ServiceSecurityGroup admits %v, want only CodeBuildSecurityGroupId", m)
		}
	}
	// The output names the Cloud Map record, and regcache setup takes it.
	url := sub(tmpl.Outputs["ServerURL"]["Value"])
	want := fmt.Sprintf("http://%s.%s:%s", tmpl.Resources["DiscoveryService"].Properties["Name"], values["NamespaceName"], values["Port"])
	if url != want {
		t.Errorf("ServerURL is %s, the service registers as %s", url, want)
	}
	bin, err := regcacheBin()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "setup", "codebuild", "--server", url).CombinedOutput(); err != nil || !strings.Contains(string(out), url) {
		t.Errorf("regcache setup codebuild --server %s: %v\n%s", url, err, out)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func keys(m map[string]bool) []string { return sortedKeys(m) }

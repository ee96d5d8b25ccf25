package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/regcache/regcache/internal/app"
	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/testhub"
)

const (
	chartDir   = "helm/regcache"
	fullValues = "helm/regcache/ci/full-values.yaml"
)

// manifest is the part of a rendered Kubernetes object the tests read.
type manifest struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct{ Name string }
	Data       map[string]string `yaml:"data"`
	Spec       struct {
		Template struct {
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	SecurityContext struct {
		RunAsNonRoot bool  `yaml:"runAsNonRoot"`
		RunAsUser    int64 `yaml:"runAsUser"`
	} `yaml:"securityContext"`
	Containers []container `yaml:"containers"`
	Volumes    []volume    `yaml:"volumes"`
}

type container struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Env   []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct{ Name, Key string } `yaml:"secretKeyRef"`
			FieldRef     *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe  probe `yaml:"livenessProbe"`
	ReadinessProbe probe `yaml:"readinessProbe"`
	VolumeMounts   []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
	SecurityContext struct {
		ReadOnlyRootFilesystem   bool `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation bool `yaml:"allowPrivilegeEscalation"`
	} `yaml:"securityContext"`
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

type volume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name string `yaml:"name"`
	} `yaml:"configMap"`
	Secret *struct {
		SecretName string `yaml:"secretName"`
		Items      []struct{ Key, Path string }
	} `yaml:"secret"`
	PersistentVolumeClaim *struct {
		ClaimName string `yaml:"claimName"`
	} `yaml:"persistentVolumeClaim"`
	EmptyDir map[string]any `yaml:"emptyDir"`
}

// helmTemplate renders the chart as `helm template regcache` does with the
// given extra arguments.
func helmTemplate(t *testing.T, args ...string) (string, error) {
	t.Helper()
	helm := requireTool(t, "helm")
	return run(t, ".", append([]string{helm, "template", "regcache", chartDir, "--namespace", "regcache"}, args...)...)
}

// parseManifests splits helm's output into objects by kind and name.
func parseManifests(t *testing.T, rendered string) map[string]manifest {
	t.Helper()
	out := map[string]manifest{}
	dec := yaml.NewDecoder(strings.NewReader(rendered))
	for {
		var m manifest
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("rendered chart is not YAML: %v", err)
		}
		if m.Kind == "" {
			continue
		}
		out[m.Kind] = m
	}
	return out
}

// chartPod is the rendered Deployment's container, volumes and config: what
// a pod of the chart runs with.
type chartPod struct {
	objects   map[string]manifest
	pod       podSpec
	c         container
	cfgText   string
	cfg       *config.Config
	env       map[string]string // name -> value, or "secret:NAME/KEY"
	mountedAt map[string]volume // mountPath -> volume
}

func renderPod(t *testing.T, args ...string) chartPod {
	t.Helper()
	out, err := helmTemplate(t, args...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, out)
	}
	p := chartPod{objects: parseManifests(t, out), env: map[string]string{}, mountedAt: map[string]volume{}}
	dep, ok := p.objects["Deployment"]
	if !ok {
		t.Fatalf("no Deployment rendered:\n%s", out)
	}
	p.pod = dep.Spec.Template.Spec
	if len(p.pod.Containers) != 1 {
		t.Fatalf("Deployment has %d containers, want 1", len(p.pod.Containers))
	}
	p.c = p.pod.Containers[0]
	for _, e := range p.c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			p.env[e.Name] = "secret:" + e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			p.env[e.Name] = "field:" + e.ValueFrom.FieldRef.FieldPath
		default:
			p.env[e.Name] = e.Value
		}
	}
	vols := map[string]volume{}
	for _, v := range p.pod.Volumes {
		vols[v.Name] = v
	}
	for _, m := range p.c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			t.Fatalf("volumeMount %s names no volume", m.Name)
		}
		p.mountedAt[m.MountPath] = v
	}
	// REGCACHE_CONFIG must name the ConfigMap's file where it is mounted.
	cfgPath := p.env["REGCACHE_CONFIG"]
	v, ok := p.mountedAt[path.Dir(cfgPath)]
	if !ok || v.ConfigMap == nil || v.ConfigMap.Name != p.objects["ConfigMap"].Metadata.Name {
		t.Fatalf("REGCACHE_CONFIG=%q is not in the mounted ConfigMap %s", cfgPath, p.objects["ConfigMap"].Metadata.Name)
	}
	p.cfgText, ok = p.objects["ConfigMap"].Data[path.Base(cfgPath)]
	if !ok {
		t.Fatalf("ConfigMap has no key %s", path.Base(cfgPath))
	}
	if p.cfg, err = config.Parse([]byte(p.cfgText), "ConfigMap "+path.Base(cfgPath)); err != nil {
		t.Fatalf("the rendered config does not load: %v\n%s", err, p.cfgText)
	}
	return p
}

// volumeFor returns the mount that holds file, and the file's path inside
// the volume.
func (p chartPod) volumeFor(file string) (volume, string, bool) {
	for mp, v := range p.mountedAt {
		if rel, err := filepath.Rel(mp, file); err == nil && !strings.HasPrefix(rel, "..") {
			return v, rel, true
		}
	}
	return volume{}, "", false
}

// TestHelmChart: helm lint passes with the defaults and with every option
// on, and what helm template renders is what regcache accepts: the config
// loads, every password_env is set from a Secret, every file the config
// names is in a mounted volume, the probes and the Service reach the port
// regcache listens on, and the pod runs as non-root on a read-only root.
func TestHelmChart(t *testing.T) {
	helm := requireTool(t, "helm")
	for _, values := range [][]string{nil, {"-f", fullValues}} {
		if out, err := run(t, ".", append([]string{helm, "lint", "--strict", chartDir}, values...)...); err != nil {
			t.Errorf("helm lint --strict %v: %v\n%s", values, err, out)
		}
	}
	for _, tc := range []struct {
		name      string
		args      []string
		wantKinds []string
		noKinds   []string
		store     string // "emptyDir" or "pvc"
	}{
		{"defaults", nil, []string{"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}, []string{"PersistentVolumeClaim", "ServiceMonitor", "NetworkPolicy", "Secret"}, "emptyDir"},
		{"full", []string{"-f", fullValues}, []string{"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "PersistentVolumeClaim", "ServiceMonitor", "NetworkPolicy"}, []string{"Secret"}, "pvc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := renderPod(t, tc.args...)
			for _, k := range tc.wantKinds {
				if _, ok := p.objects[k]; !ok {
					t.Errorf("no %s rendered", k)
				}
			}
			// The chart never holds a secret's value itself.
			for _, k := range tc.noKinds {
				if _, ok := p.objects[k]; ok {
					t.Errorf("%s rendered, want none", k)
				}
			}
			checkPodAgainstConfig(t, p)
			store, _, _ := p.volumeFor(p.cfg.Storage.Root)
			switch {
			case tc.store == "emptyDir" && store.EmptyDir == nil:
				t.Errorf("store volume %s is not an emptyDir", store.Name)
			case tc.store == "pvc" && (store.PersistentVolumeClaim == nil || store.PersistentVolumeClaim.ClaimName != p.objects["PersistentVolumeClaim"].Metadata.Name):
				t.Errorf("store volume %s is not the chart's claim", store.Name)
			}
			checkProbesServed(t, p)
		})
	}
}

func checkPodAgainstConfig(t *testing.T, p chartPod) {
	t.Helper()
	cfg := p.cfg
	// Every password_env comes from a Secret.
	for name, r := range cfg.Registries {
		auths := []*config.Auth{r.Auth}
		for _, m := range r.Mirrors {
			auths = append(auths, m.Auth)
		}
		for _, a := range auths {
			if a != nil && a.PasswordEnv != "" && !strings.HasPrefix(p.env[a.PasswordEnv], "secret:") {
				t.Errorf("registries.%s: password_env %s is not set from a Secret in the container (env %q)", name, a.PasswordEnv, p.env[a.PasswordEnv])
			}
		}
	}
	// Every file the config names is in a volume, the store in a writable
	// one, and a Secret's file under the name the config uses.
	files := map[string]string{"storage.root": cfg.Storage.Root}
	if ca := cfg.ClientAuth; ca != nil {
		files["client_auth.htpasswd"] = ca.Htpasswd
		if ca.TokenKeyFile != "" {
			files["client_auth.token_key_file"] = ca.TokenKeyFile
		}
	}
	for key, f := range files {
		v, rel, ok := p.volumeFor(f)
		if !ok {
			t.Errorf("%s: %s is in no mounted volume; on a read-only root it cannot exist", key, f)
			continue
		}
		if v.Secret != nil {
			found := false
			for _, it := range v.Secret.Items {
				found = found || it.Path == rel
			}
			if !found {
				t.Errorf("%s: %s: Secret %s is mounted without an item at %s", key, f, v.Secret.SecretName, rel)
			}
		}
	}
	for _, m := range p.c.VolumeMounts {
		if m.MountPath == cfg.Storage.Root && m.ReadOnly {
			t.Errorf("the store %s is mounted read-only", m.MountPath)
		}
	}
	// The probes and the Service use the port regcache listens on.
	_, port, _ := strings.Cut(cfg.Listen, ":")
	var http string
	for _, cp := range p.c.Ports {
		if fmt.Sprint(cp.ContainerPort) == port {
			http = cp.Name
		}
	}
	if http == "" {
		t.Errorf("no container port is listen's %s", cfg.Listen)
	}
	for _, pr := range []probe{p.c.LivenessProbe, p.c.ReadinessProbe} {
		if pr.HTTPGet.Port != http {
			t.Errorf("probe %s on port %q, regcache listens on %q", pr.HTTPGet.Path, pr.HTTPGet.Port, http)
		}
	}
	if p.c.LivenessProbe.HTTPGet.Path != "/healthz" || p.c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("liveness %s, readiness %s: want /healthz and /readyz", p.c.LivenessProbe.HTTPGet.Path, p.c.ReadinessProbe.HTTPGet.Path)
	}
	if !p.pod.SecurityContext.RunAsNonRoot || p.pod.SecurityContext.RunAsUser == 0 || !p.c.SecurityContext.ReadOnlyRootFilesystem || p.c.SecurityContext.AllowPrivilegeEscalation {
		t.Errorf("pod security: %+v, container %+v: want non-root, read-only root, no privilege escalation", p.pod.SecurityContext, p.c.SecurityContext)
	}
	if len(p.c.Args) == 0 || p.c.Args[0] != "serve" {
		t.Errorf("container args %v, want serve", p.c.Args)
	}
}

// checkProbesServed lays out the pod's volumes under a local directory (the
// Secrets' files with made-up values), runs `regcache serve --check-config`
// on the rendered config with the pod's environment, then builds regcache
// from it and asks its handler for the probe paths: each must answer 200.
func checkProbesServed(t *testing.T, p chartPod) {
	t.Helper()
	root := t.TempDir()
	mounts := sortedKeys(p.mountedAt)
	// Longest first, so /etc/regcache/auth is not taken for /etc/regcache.
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	var pairs []string
	for _, mp := range mounts {
		if err := os.MkdirAll(filepath.Join(root, mp), 0o755); err != nil {
			t.Fatal(err)
		}
		pairs = append(pairs, " "+mp, " "+filepath.Join(root, mp))
	}
	// One pass: a replaced path is not replaced again.
	text := strings.NewReplacer(pairs...).Replace(p.cfgText)
	cfgFile := filepath.Join(root, p.env["REGCACHE_CONFIG"])
	if err := os.WriteFile(cfgFile, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(text), cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	if ca := cfg.ClientAuth; ca != nil {
		// ci:ci, bcrypt.
		if err := os.WriteFile(ca.Htpasswd, []byte("ci:$2y$05$jcY4hH1IKWiIKcbGeq6vWOfMQoAdm/79IeJhIOewJo3VZ8OkOC2Zq\n"), 0o600); err != nil {
			t.Fatalf("client_auth.htpasswd is not in a mounted volume: %v", err)
		}
		if ca.TokenKeyFile != "" {
			if err := os.WriteFile(ca.TokenKeyFile, bytes.Repeat([]byte("k"), 40), 0o600); err != nil {
				t.Fatalf("client_auth.token_key_file is not in a mounted volume: %v", err)
			}
		}
	}
	if cl := cfg.Cluster; cl != nil {
		if err := os.WriteFile(cl.SecretFile, bytes.Repeat([]byte("c"), 40), 0o600); err != nil {
			t.Fatalf("cluster.secret_file is not in a mounted volume: %v", err)
		}
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "REGCACHE_CONFIG=" + cfgFile}
	// The pod's own variables, as the kubelet sets them: secrets made up,
	// the pod's IP a loopback one, $(NAME) references expanded.
	podEnv := map[string]string{}
	for name, v := range p.env {
		switch {
		case strings.HasPrefix(v, "secret:"):
			podEnv[name] = "made-up-" + strings.ToLower(name)
		case v == "field:status.podIP":
			podEnv[name] = "127.0.0.1"
		}
	}
	for name, v := range p.env {
		if !strings.HasPrefix(v, "secret:") && !strings.HasPrefix(v, "field:") && name != "REGCACHE_CONFIG" {
			podEnv[name] = os.Expand(strings.ReplaceAll(strings.ReplaceAll(v, "$(", "${"), ")", "}"), func(k string) string { return podEnv[k] })
		}
	}
	for name, v := range podEnv {
		env = append(env, name+"="+v)
		t.Setenv(name, v)
	}
	bin, err := regcacheBin()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append(p.c.Args, "--check-config")...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "config OK") {
		t.Fatalf("regcache %s --check-config with the rendered config: %v\n%s", strings.Join(p.c.Args, " "), err, out)
	}
	a, err := app.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("regcache does not start from the rendered config: %v", err)
	}
	for _, pr := range []probe{p.c.LivenessProbe, p.c.ReadinessProbe} {
		rec := httptest.NewRecorder()
		a.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, pr.HTTPGet.Path, nil))
		if rec.Code != http.StatusOK {
			t.Errorf("probe GET %s: %d, want 200 (%s)", pr.HTTPGet.Path, rec.Code, strings.TrimSpace(rec.Body.String()))
		}
	}
}

// The chart refuses the combinations that cannot work, and helm lint fails
// on a broken template: the checks above can fail.
func TestHelmChartRefusesBrokenSetups(t *testing.T) {
	helm := requireTool(t, "helm")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"client auth without its Secret", []string{"--set", "clientAuth.enabled=true"}, "clientAuth.htpasswdSecret"},
		{"replicas sharing one store", []string{"--set", "persistence.enabled=true", "--set", "replicaCount=2"}, "must not share a store"},
		{"replicas without a shared token key", []string{"--set", "clientAuth.enabled=true", "--set", "clientAuth.htpasswdSecret=h", "--set", "replicaCount=2"}, "tokenKeySecret"},
		{"cluster without redis", []string{"--set", "cluster.enabled=true"}, "cluster.redis"},
		{"cluster without its secret", []string{"--set", "cluster.enabled=true", "--set", "cluster.redis=r:6379"}, "cluster.secretName"},
		{"cluster without a shared store", []string{"--set", "cluster.enabled=true", "--set", "cluster.redis=r:6379", "--set", "cluster.secretName=s"}, "config.storage.s3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := helmTemplate(t, tc.args...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Errorf("helm template %v: %v, want a failure naming %q\n%s", tc.args, err, tc.want, lastLines(out, 5))
			}
		})
	}
	broken := t.TempDir()
	if err := os.CopyFS(broken, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	svc := filepath.Join(broken, "templates", "service.yaml")
	b, _ := os.ReadFile(svc)
	os.WriteFile(svc, bytes.Replace(b, []byte("{{ .Values.service.type }}"), []byte("{{ .Values.service.type"), 1), 0o644)
	if out, err := run(t, ".", helm, "lint", "--strict", broken); err == nil {
		t.Errorf("helm lint passed a chart with an unclosed action:\n%s", out)
	}
}

// Three replicas on one bucket, coordinated through Redis: the chart
// renders a config regcache accepts, gives each pod its own advertised
// address and the shared secret, and the readiness probe passes against a
// real S3 server and Redis.
func TestHelmChartCluster(t *testing.T) {
	requireTool(t, "helm")
	s3 := testhub.StartS3(t)
	redis := testhub.StartRedis(t)
	for _, kv := range s3.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	p := renderPod(t, "--set", "replicaCount=3", "--set", "cluster.enabled=true", "--set", "cluster.redis="+redis.Addr,
		"--set", "cluster.secretName=rc-cluster", "--set", "config.storage.s3.bucket="+s3.Bucket,
		"--set", "config.storage.s3.endpoint="+s3.Endpoint, "--set", "config.storage.s3.path_style=true")
	if p.cfg.Cluster == nil || p.cfg.Cluster.Redis != redis.Addr || p.cfg.Cluster.AdvertiseEnv == "" {
		t.Fatalf("rendered cluster config: %+v", p.cfg.Cluster)
	}
	if got := p.env[p.cfg.Cluster.AdvertiseEnv]; got != "http://$(POD_IP):5000" || p.env["POD_IP"] != "field:status.podIP" {
		t.Errorf("the advertised address is %q (POD_IP %q), want the pod's IP and port", got, p.env["POD_IP"])
	}
	if v, _, ok := p.volumeFor(p.cfg.Cluster.SecretFile); !ok || v.Secret == nil || v.Secret.SecretName != "rc-cluster" {
		t.Errorf("cluster.secret_file %s is not in the rc-cluster Secret's volume", p.cfg.Cluster.SecretFile)
	}
	checkPodAgainstConfig(t, p)
	checkProbesServed(t, p)
}

package deploy

import (
	"os"
	"testing"
)

// deploy/kubernetes/regcache.yaml is the chart rendered with its defaults
// (`make manifests`); a chart change without regenerating it fails here.
func TestKubernetesManifestsUpToDate(t *testing.T) {
	want, err := helmTemplate(t)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, want)
	}
	got, err := os.ReadFile("kubernetes/regcache.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("deploy/kubernetes/regcache.yaml is not the chart's current rendering: run `make manifests`")
	}
	p := parseManifests(t, string(got))
	for _, k := range []string{"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} {
		if _, ok := p[k]; !ok {
			t.Errorf("deploy/kubernetes/regcache.yaml has no %s", k)
		}
	}
}

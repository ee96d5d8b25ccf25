package ref

import (
	"reflect"
	"testing"
)

func TestParseAccept(t *testing.T) {
	tests := []struct {
		name   string
		values []string
		want   AcceptMask
	}{
		{"none", nil, 0},
		{"wildcard", []string{"*/*"}, 0},
		{"docker v2 only (old docker)", []string{"application/vnd.docker.distribution.manifest.v2+json"}, AcceptDockerManifest},
		{"containerd style, one header", []string{"application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*"}, AcceptAll},
		{"dockerd style, repeated headers", []string{
			"application/vnd.docker.distribution.manifest.v2+json",
			"application/vnd.docker.distribution.manifest.list.v2+json",
			"application/vnd.oci.image.index.v1+json",
			"application/vnd.oci.image.manifest.v1+json",
		}, AcceptAll},
		{"quality params", []string{"application/vnd.oci.image.index.v1+json;q=0.9, application/vnd.oci.image.manifest.v1+json;q=0"}, AcceptOCIIndex},
		{"schema1 ignored", []string{"application/vnd.docker.distribution.manifest.v1+prettyjws"}, 0},
		{"garbage", []string{";;;,"}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ParseAccept(tc.values); got != tc.want {
				t.Fatalf("ParseAccept = %04b, want %04b", got, tc.want)
			}
		})
	}
}

func TestAcceptValuesRoundTrip(t *testing.T) {
	for m := AcceptMask(0); m <= AcceptAll; m++ {
		if got := ParseAccept(m.Values()); got != m {
			t.Errorf("mask %04b -> %v -> %04b", m, m.Values(), got)
		}
	}
	want := []string{"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"}
	if got := AcceptAll.Values(); !reflect.DeepEqual(got, want) {
		t.Errorf("AcceptAll.Values() = %v", got)
	}
}

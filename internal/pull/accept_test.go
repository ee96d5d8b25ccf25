package pull

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

func TestFetchHoldsBackLastByteUntilVerified(t *testing.T) {
	f := &fetch{notify: make(chan struct{})}
	f.progress(10, false, nil)
	if avail, done, _, _ := f.state(); avail != 9 || done {
		t.Fatalf("in flight: avail %d done %v, want 9 false", avail, done)
	}
	f.progress(0, true, errTest)
	if avail, done, err, _ := f.state(); avail != 9 || !done || err == nil {
		t.Fatalf("failed: avail %d done %v err %v; the last byte must never be released", avail, done, err)
	}
	g := &fetch{notify: make(chan struct{})}
	g.progress(10, false, nil)
	g.progress(0, true, nil)
	if avail, done, err, _ := g.state(); avail != 10 || !done || err != nil {
		t.Fatalf("verified: avail %d done %v err %v", avail, done, err)
	}
}

var errTest = &Error{Status: 502, Code: "DIGEST_INVALID", Message: "test"}

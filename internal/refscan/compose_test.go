package refscan

import (
	"slices"
	"testing"
)

func TestExpandCompose(t *testing.T) {
	for _, tc := range []struct {
		in, want      string
		used, missing []string
	}{
		{"node:21", "node:21", nil, nil},
		{"postgres:${PG-16}", "postgres:16", []string{"${PG-16}"}, nil},
		{"${REG:-docker.io}/library/node:${V:-21}", "docker.io/library/node:21", []string{"${REG:-docker.io}", "${V:-21}"}, nil},
		{"${IMAGE:-alpine:3.19}", "alpine:3.19", []string{"${IMAGE:-alpine:3.19}"}, nil},
		{"redis:${TAG}", "redis:${TAG}", nil, []string{"TAG"}},
		{"redis:$TAG", "redis:$TAG", nil, []string{"TAG"}},
		{"redis:${TAG:?set TAG}", "redis:${TAG:?set TAG}", nil, []string{"TAG"}},
		{"redis:${TAG:-}", "redis:", []string{"${TAG:-}"}, nil},
		{"a$$b", "a$b", nil, nil},
		{"${A:-${B:-x}}", "x", []string{"${B:-x}", "${A:-x}"}, nil},
		{"${A:-${B}}", "${A:-${B}}", nil, []string{"B"}},
		{"$${NOT_A_VAR}", "${NOT_A_VAR}", nil, nil},
	} {
		got, used, missing := expandCompose(tc.in)
		if got != tc.want || !slices.Equal(used, tc.used) || !slices.Equal(missing, tc.missing) {
			t.Errorf("expandCompose(%q) = %q, used %q, missing %q; want %q, %q, %q", tc.in, got, used, missing, tc.want, tc.used, tc.missing)
		}
	}
}

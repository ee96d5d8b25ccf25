package upstream

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

func mustRegistry(t *testing.T, host string) name.Registry {
	t.Helper()
	reg, err := name.NewRegistry(host)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

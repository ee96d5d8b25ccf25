package config

import (
	"strings"
	"testing"
)

// Config files are written by hand: no input may panic the loader, and an
// error must never echo a password value.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"listen: :5000\n",
		"registries:\n  docker.io:\n    url: https://registry-1.docker.io\n    auth: {username: u, password: hunter2secret}\n",
		"storage: {root: /x, max_size: 10GiB}\ntag_ttl: 5m\n",
		"registries:\n  docker.io:\n    url: ftp://hunter2secret@x\n",
		"tag_ttl: -1s\n",
		"client_auth: {htpasswd: /x, anonymous_registries: [docker.io]}\n",
		"max_blob_size: 1KiB\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		_, err := Parse([]byte(doc), "fuzz.yaml")
		if err != nil && strings.Contains(doc, "hunter2secret") && strings.Contains(err.Error(), "hunter2secret") {
			t.Fatalf("an error echoes a secret: %v", err)
		}
	})
}

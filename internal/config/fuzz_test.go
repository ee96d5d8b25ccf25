package config

import (
	"regexp"
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
		if err == nil {
			return
		}
		for _, secret := range secrets(doc) {
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("an error echoes the secret %q: %v", secret, err)
			}
		}
	})
}

var (
	passwordValue = regexp.MustCompile(`password\s*:\s*["']?([^\s"',}\]#]+)`)
	urlUserinfo   = regexp.MustCompile(`://([^/\s@"']+)@`)
)

// secrets returns what doc holds as secrets: the values of password keys
// and the userinfo of URLs, when long enough not to occur in an error by
// chance. Keys, anchors, tags and other values are not secrets: errors may
// quote them, which is how an operator finds them (an anchor named like a
// password, found by the fuzzer, is an anchor).
func secrets(doc string) []string {
	var out []string
	for _, re := range []*regexp.Regexp{passwordValue, urlUserinfo} {
		for _, m := range re.FindAllStringSubmatch(doc, -1) {
			if len(m[1]) >= 6 {
				out = append(out, m[1])
			}
		}
	}
	return out
}

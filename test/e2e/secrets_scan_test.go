package e2e

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestScanForSecretsFindsLeaks proves the scan behind acceptance 8 can fail:
// a clean result only means something if a leak would have been found, in
// plain and in Basic-auth form.
func TestScanForSecretsFindsLeaks(t *testing.T) {
	const user, pw = "ci-user", "pw-0123456789abcdef"
	basic := base64.StdEncoding.EncodeToString([]byte(user + ":" + pw))
	for _, tc := range []struct {
		name  string
		log   string
		leaks int
	}{
		{"clean", "level=INFO msg=\"fetched\" user=ci-user\n", 0},
		{"plain", "level=DEBUG msg=\"auth\" password=" + pw + "\n", 1},
		{"basic header", "Authorization: Basic " + basic + "\n", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "regcache.log"), []byte(tc.log), 0o644); err != nil {
				t.Fatal(err)
			}
			files, leaks, err := scanForSecrets(dir, []string{pw, basic})
			if err != nil || files != 1 {
				t.Fatalf("scan: %d files, %v", files, err)
			}
			if len(leaks) != tc.leaks {
				t.Fatalf("found %d leaks, want %d: %v", len(leaks), tc.leaks, leaks)
			}
			for _, l := range leaks {
				if strings.Contains(l, pw) || strings.Contains(l, basic) {
					t.Errorf("the leak report repeats the secret: %s", l)
				}
			}
		})
	}
}

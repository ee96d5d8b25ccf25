// Package golden compares test output with files under testdata/, and
// rewrites those files when a test binary is run with -update. It is
// imported only by tests.
package golden

import (
	"os"
	"path/filepath"
	"testing"
)

// Check compares got with the file at path, or, when update is set, writes
// got there. Each test package owns its -update flag and passes its value.
func Check(t testing.TB, path string, got []byte, update bool) {
	t.Helper()
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from its golden file; rerun with -update and review the diff.\ngot:\n%s", path, got)
	}
}

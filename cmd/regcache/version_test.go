package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/regcache/regcache/internal/buildinfo"
)

// `regcache version`, `regcache --version` and `version --json` tell the
// same build.
func TestVersion(t *testing.T) {
	run := func(args ...string) string {
		t.Helper()
		out, err := runCmd(t, "", args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out
	}
	want := buildinfo.Read()
	line := run("version")
	if line != want.String()+"\n" || !strings.HasPrefix(line, "regcache ") || !strings.Contains(line, want.GoVersion) {
		t.Errorf("regcache version printed %q, want %q", line, want.String())
	}
	if flag := run("--version"); flag != line {
		t.Errorf("--version printed %q, version printed %q", flag, line)
	}
	var got buildinfo.Info
	if err := json.Unmarshal([]byte(run("version", "--json")), &got); err != nil || got != want {
		t.Errorf("version --json: %+v, %v; want %+v", got, err, want)
	}
}

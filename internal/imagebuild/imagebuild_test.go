package imagebuild

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/regcache/regcache/internal/config"
)

const testCA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

func testSpec(t *testing.T) Spec {
	t.Helper()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	os.WriteFile(ca, []byte(testCA), 0o644)
	bins := map[string]string{}
	for _, p := range []string{"linux/amd64", "linux/arm64"} {
		b := filepath.Join(dir, strings.ReplaceAll(p, "/", "-"))
		os.WriteFile(b, []byte("binary for "+p), 0o755)
		bins[p] = b
	}
	return Spec{Binaries: bins, RootFS: "../../deploy/image/rootfs", CABundle: ca,
		Created: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Version: "v1.2.3", Revision: "abc123", Source: "https://example.com/regcache"}
}

// The same inputs give the same digest (the build is reproducible), and a
// different binary gives a different one.
func TestBuildIsReproducible(t *testing.T) {
	spec := testSpec(t)
	digest := func(s Spec) string {
		idx, err := Build(s)
		if err != nil {
			t.Fatal(err)
		}
		d, err := idx.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d.String()
	}
	first := digest(spec)
	if again := digest(spec); again != first {
		t.Errorf("two builds of the same inputs: %s and %s", first, again)
	}
	os.WriteFile(spec.Binaries["linux/arm64"], []byte("another binary"), 0o755)
	if changed := digest(spec); changed == first {
		t.Error("a changed binary did not change the index digest")
	}
}

func TestBuildWritesLayout(t *testing.T) {
	idx, err := Build(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "layout")
	if err := WriteLayout(dir, "1.2.3", idx); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	top, _ := p.ImageIndex()
	m, err := top.IndexManifest()
	if err != nil || len(m.Manifests) != 1 || m.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "1.2.3" {
		t.Fatalf("index.json: %v %+v", err, m)
	}
	inner, _ := top.ImageIndex(m.Manifests[0].Digest)
	im, _ := inner.IndexManifest()
	var plats []string
	for _, d := range im.Manifests {
		plats = append(plats, d.Platform.String())
	}
	if !slices.Equal(plats, []string{"linux/amd64", "linux/arm64"}) || im.Annotations["org.opencontainers.image.revision"] != "abc123" {
		t.Errorf("index: platforms %v, annotations %v", plats, im.Annotations)
	}
}

func TestBuildErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Spec)
		want   string
	}{
		{"no binaries", func(s *Spec) { s.Binaries = nil }, "no binaries"},
		{"missing binary", func(s *Spec) { s.Binaries["linux/amd64"] = "/nonexistent" }, "linux/amd64"},
		{"bad platform", func(s *Spec) { s.Binaries["amd64"] = s.Binaries["linux/amd64"] }, `platform "amd64"`},
		{"CA bundle without a certificate", func(s *Spec) { os.WriteFile(s.CABundle, []byte("junk"), 0o644) }, "no PEM certificate"},
		{"no rootfs", func(s *Spec) { s.RootFS = "/nonexistent" }, "rootfs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testSpec(t)
			tc.change(&s)
			if _, err := Build(s); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want one naming %q", err, tc.want)
			}
		})
	}
}

// The Dockerfile builds the image `make image` builds: the same final
// stage, line for line in what a container sees.
func TestDockerfileMatchesImageBuild(t *testing.T) {
	f, err := os.Open("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var final []string // instructions of the last stage, continuation lines joined
	var cur string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cur == "" && (line == "" || strings.HasPrefix(line, "#")) {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		cur += line
		if strings.HasPrefix(cur, "FROM ") {
			final = nil
		}
		final = append(final, cur)
		cur = ""
	}
	cfg := Config(testSpec(t).Labels())
	entry, _ := json.Marshal(cfg.Entrypoint)
	cmd, _ := json.Marshal(cfg.Cmd)
	want := []string{
		"FROM scratch",
		"COPY deploy/image/rootfs/ /",
		"COPY --from=build /etc/ssl/certs/ca-certificates.crt " + CAPath,
		"COPY --from=build --chown=65532:65532 /out" + StoreDir + " " + StoreDir,
		"COPY --from=build /out" + BinaryPath + " " + BinaryPath,
		"ENV " + strings.Join(cfg.Env, " "),
		"USER " + cfg.User,
		"WORKDIR " + cfg.WorkingDir,
		"VOLUME " + StoreDir,
		"EXPOSE " + Port,
		"ENTRYPOINT " + strings.ReplaceAll(string(entry), ",", ", "),
		"CMD " + strings.ReplaceAll(string(cmd), ",", ", "),
	}
	for _, w := range want {
		if !slices.Contains(final, w) {
			t.Errorf("the Dockerfile's final stage has no line %q", w)
		}
	}
	var labels string
	for _, l := range final {
		if strings.HasPrefix(l, "LABEL ") {
			labels = l
		}
	}
	for k := range cfg.Labels {
		if !strings.Contains(labels, k+"=") {
			t.Errorf("the Dockerfile has no label %s", k)
		}
	}
	if strings.Count(labels, "org.opencontainers.image.") != len(cfg.Labels) {
		t.Errorf("the Dockerfile's labels differ from imagebuild's: %s", labels)
	}
}

// The image's default config loads, and keeps the store on the volume.
func TestImageDefaultConfig(t *testing.T) {
	cfg, err := config.Load(filepath.Join("../../deploy/image/rootfs", ConfigPath))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Storage.Root != StoreDir || cfg.Listen != ":5000" || !strings.HasPrefix(Port, "5000/") {
		t.Errorf("storage.root %s, listen %s; want %s on the port the image exposes (%s)", cfg.Storage.Root, cfg.Listen, StoreDir, Port)
	}
}

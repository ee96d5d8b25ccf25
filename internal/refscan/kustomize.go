package refscan

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// kustomizationNames are the file names kustomize reads in a directory.
var kustomizationNames = []string{"kustomization.yaml", "kustomization.yml", "Kustomization"}

// applyKustomize links each kustomize images entry to the manifest
// references it replaces. Those references pull nothing as written: they
// are marked OverriddenBy the entry and count 0, and the entry counts one
// pull per container it applies to. Manifests listed by the kustomization
// but not part of this scan are read to count them.
func applyKustomize(res *Result, opts Options) {
	byFile := map[string][]int{}
	for i, r := range res.Refs {
		byFile[filepath.Clean(r.File)] = append(byFile[filepath.Clean(r.File)], i)
	}
	for i := range res.Refs {
		k := &res.Refs[i]
		if k.kustomizeName == "" {
			continue
		}
		where := fmt.Sprintf("%s:%d", k.File, k.Line)
		containers := 0
		for _, f := range kustomizeManifests(filepath.Dir(k.File), map[string]bool{}) {
			var refs []*Ref
			if idx, ok := byFile[f]; ok {
				for _, j := range idx {
					refs = append(refs, &res.Refs[j])
				}
			} else if scanned, err := ScanFile(f, opts); err == nil {
				for j := range scanned {
					refs = append(refs, &scanned[j])
				}
			}
			for _, r := range refs {
				if r.Kind != "kubernetes image" || r.Original[:NameEnd(r.Original)] != k.kustomizeName {
					continue
				}
				containers++
				if r.OverriddenBy == "" {
					r.OverriddenBy = where
					r.PullsPerRun = 0
				}
			}
		}
		if containers == 0 {
			k.Note = strings.TrimPrefix(k.Note+"; no manifest of this kustomization uses "+k.kustomizeName, "; ")
		}
		if k.DockerHub {
			k.PullsPerRun = containers
		}
	}
}

// kustomizeManifests lists the local manifest files of the kustomization
// in dir: its resources (and legacy bases), following directories into
// their own kustomizations. Remote resources are not followed.
func kustomizeManifests(dir string, visited map[string]bool) []string {
	dir = filepath.Clean(dir)
	if visited[dir] {
		return nil
	}
	visited[dir] = true
	var src []byte
	for _, n := range kustomizationNames {
		if b, err := os.ReadFile(filepath.Join(dir, n)); err == nil {
			src = b
			break
		}
	}
	var doc yaml.Node
	if src == nil || yaml.Unmarshal(src, &doc) != nil || len(doc.Content) == 0 {
		return nil
	}
	var out []string
	for _, key := range []string{"resources", "bases"} {
		list := deref(mapGet(doc.Content[0], key))
		if list == nil || list.Kind != yaml.SequenceNode {
			continue
		}
		for _, item := range list.Content {
			v, ok := scalar(item)
			if !ok || strings.Contains(v, "://") || strings.Contains(v, "?ref=") {
				continue
			}
			p := filepath.Clean(filepath.Join(dir, v))
			info, err := os.Stat(p)
			switch {
			case err != nil:
			case info.IsDir():
				out = append(out, kustomizeManifests(p, visited)...)
			default:
				out = append(out, p)
			}
		}
	}
	return out
}

// mergeDuplicates folds references reported twice at the same place (a
// compose file scanned on its own and reached through another's extends)
// into one, adding up their pulls.
func mergeDuplicates(refs []Ref) []Ref {
	type key struct {
		file         string
		line, column int
		kind, orig   string
	}
	at := map[key]int{}
	out := refs[:0]
	for _, r := range refs {
		k := key{filepath.Clean(r.File), r.Line, r.Column, r.Kind, r.Original}
		if i, ok := at[k]; ok {
			out[i].PullsPerRun += r.PullsPerRun
			continue
		}
		at[k] = len(out)
		out = append(out, r)
	}
	return out
}

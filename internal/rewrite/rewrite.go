package rewrite

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/regcache/regcache/internal/refscan"
)

// Change is one reference rewritten.
type Change struct {
	Ref refscan.Ref
	Old string
	New string
}

// Skip is one reference left alone, with the reason.
type Skip struct {
	Ref    refscan.Ref
	Reason string
}

// FileResult is the plan for one file.
type FileResult struct {
	File    string
	Old     []byte
	New     []byte
	Changes []Change
	Skips   []Skip
}

// Changed reports whether the file content changes.
func (f *FileResult) Changed() bool { return string(f.Old) != string(f.New) }

// Plan computes the new content of src given the references scan found in
// it. It does not touch the disk.
func Plan(file string, src []byte, refs []refscan.Ref, t Target) FileResult {
	fr := FileResult{File: file, Old: src}
	type edit struct {
		start, end int
		text       string
	}
	var edits []edit
	// Several references can be one place in the file (every FROM ${BASE}
	// is the default of ARG BASE): that place is changed once.
	done := map[[2]int]bool{}
	for _, r := range refs {
		if r.OverriddenBy != "" {
			continue // changed where it is overridden (kustomize newName)
		}
		if r.Span == nil {
			switch {
			case r.Problem != "" && (r.Registry == "" || t.relevant(r.Registry)):
				fr.Skips = append(fr.Skips, Skip{r, r.Problem})
			case r.Problem == "" && r.Normalized != "" && t.relevant(r.Registry):
				fr.Skips = append(fr.Skips, Skip{r, "not written literally in the file (escapes or folding); rewrite by hand"})
			}
			continue
		}
		sp := r.Span
		if sp.End > len(src) || string(src[sp.Start:sp.End]) != sp.Text {
			fr.Skips = append(fr.Skips, Skip{r, "file content does not match the scan; rescan"})
			continue
		}
		old := sp.Reference()
		mapped, out, reason := t.Map(old)
		switch {
		case out == Refused:
			fr.Skips = append(fr.Skips, Skip{r, reason})
		case out == Changed && !done[[2]int{sp.Start, sp.End}]:
			done[[2]int{sp.Start, sp.End}] = true
			text := mapped
			if sp.Format != "" {
				text = fmt.Sprintf(sp.Format, mapped)
			}
			edits = append(edits, edit{sp.Start, sp.End, text})
			fr.Changes = append(fr.Changes, Change{Ref: r, Old: old, New: mapped})
		}
	}
	// Apply from the end so earlier offsets stay valid.
	sort.Slice(edits, func(i, j int) bool { return edits[i].start > edits[j].start })
	out := append([]byte(nil), src...)
	last := len(out) + 1
	for _, e := range edits {
		if e.end > last {
			continue // overlapping spans cannot happen; be safe anyway
		}
		out = append(out[:e.start], append([]byte(e.text), out[e.end:]...)...)
		last = e.start
	}
	fr.New = out
	return fr
}

// WriteAtomic replaces path with data through a temporary file in the same
// directory and a rename, so a reader never sees a half-written file. The
// mode of an existing file is kept (0644 for a new one), and a symlink is
// followed so the link stays a link.
func WriteAtomic(path string, data []byte) error {
	return WriteAtomicMode(path, data, 0)
}

// WriteAtomicMode is WriteAtomic with the mode to use when the file does not
// exist yet (0 means 0644).
func WriteAtomicMode(path string, data []byte, newMode os.FileMode) error {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	mode := newMode
	if mode == 0 {
		mode = 0o644
	}
	if info, err := os.Stat(path); err == nil {
		mode = info.Mode().Perm()
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".regcache-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	return nil
}

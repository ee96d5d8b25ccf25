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
	for _, r := range refs {
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
		newText, out, reason := t.Map(sp.Text)
		switch out {
		case Refused:
			fr.Skips = append(fr.Skips, Skip{r, reason})
		case Changed:
			edits = append(edits, edit{sp.Start, sp.End, newText})
			fr.Changes = append(fr.Changes, Change{Ref: r, Old: sp.Text, New: newText})
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

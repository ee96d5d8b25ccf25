package refscan

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Options tune a scan.
type Options struct {
	// Platforms is how many platforms each multi-platform Dockerfile build
	// produces; it multiplies the pull estimate of stages without a fixed
	// --platform. Zero means 1.
	Platforms int
}

// Result is what a scan found.
type Result struct {
	Refs   []Ref       `json:"references"`
	Errors []FileError `json:"errors,omitempty"`
}

// skipDirs are never descended into: they hold dependencies or VCS data,
// not the project's own pipeline files.
var skipDirs = map[string]bool{".git": true, "node_modules": true, ".hg": true, ".svn": true}

// Scan walks paths (files or directories) and scans every file Classify
// recognises. Files named explicitly are scanned even if unrecognised YAML.
func Scan(paths []string, opts Options) Result {
	var res Result
	// A file reached twice (". Dockerfile") is scanned once, so a rewrite
	// never sees the same reference twice.
	done := map[string]bool{}
	scanOnce := func(p string) {
		key, err := filepath.Abs(p)
		if err != nil {
			key = p
		}
		if done[key] {
			return
		}
		done[key] = true
		refs, ferr := ScanFile(p, opts)
		res.add(refs, ferr)
	}
	for _, root := range paths {
		info, err := os.Stat(root)
		if err != nil {
			res.Errors = append(res.Errors, FileError{File: root, Msg: errMsg(err)})
			continue
		}
		if !info.IsDir() {
			scanOnce(root)
			continue
		}
		err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				res.Errors = append(res.Errors, FileError{File: p, Msg: errMsg(err)})
				if d != nil && d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			if d.IsDir() {
				if p != root && skipDirs[d.Name()] {
					return fs.SkipDir
				}
				return nil
			}
			if !d.Type().IsRegular() || Classify(filepath.ToSlash(p)) == FormatNone {
				return nil
			}
			scanOnce(p)
			return nil
		})
		if err != nil {
			res.Errors = append(res.Errors, FileError{File: root, Msg: errMsg(err)})
		}
	}
	res.Refs = mergeDuplicates(res.Refs)
	applyKustomize(&res, opts)
	sort.SliceStable(res.Refs, func(i, j int) bool {
		a, b := res.Refs[i], res.Refs[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	return res
}

func (r *Result) add(refs []Ref, err *FileError) {
	r.Refs = append(r.Refs, refs...)
	if err != nil {
		r.Errors = append(r.Errors, *err)
	}
}

func errMsg(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Op + ": " + pe.Err.Error()
	}
	return err.Error()
}

// ScanFile reads and scans one file, classified by its name.
func ScanFile(path string, opts Options) ([]Ref, *FileError) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, &FileError{File: path, Msg: errMsg(err)}
	}
	slash := filepath.ToSlash(path)
	f := Classify(slash)
	if f == FormatNone {
		return nil, &FileError{File: path, Msg: "not a Dockerfile/Containerfile or YAML file; skipped"}
	}
	if f == FormatYAML && bytes.Contains(src, []byte("{{")) && strings.Contains("/"+slash, "/templates/") {
		// Helm chart templates are not YAML until rendered; their images
		// come from values files, which are scanned.
		return nil, nil
	}
	return ScanBytes(path, f, src, opts)
}

var yamlLine = regexp.MustCompile(`line (\d+)`)

// ScanBytes scans src as format f. A file that is binary or does not parse
// yields a FileError with the line of the problem and no references.
func ScanBytes(name string, f Format, src []byte, opts Options) ([]Ref, *FileError) {
	if i := bytes.IndexByte(src, 0); i >= 0 || !utf8.Valid(src) {
		if i < 0 {
			i = invalidUTF8(src)
		}
		line, _ := newLineIndex(src, f != FormatDockerfile).pos(i)
		return nil, &FileError{File: name, Line: line, Msg: "binary file (not UTF-8 text); skipped"}
	}
	platforms := opts.Platforms
	if platforms < 1 {
		platforms = 1
	}
	if f == FormatDockerfile {
		return scanDockerfile(name, src, platforms), nil
	}
	s := newYAMLScanner(name, src)
	dec := yaml.NewDecoder(bytes.NewReader(src))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fe := &FileError{File: name, Msg: "invalid YAML: " + err.Error()}
			if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
				fe.Line, _ = strconv.Atoi(m[1])
			}
			return nil, fe
		}
		s.scanDoc(f, &doc)
	}
	return s.result(), nil
}

func invalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return 0
}

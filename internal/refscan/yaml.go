package refscan

import (
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// yamlScanner collects references from one YAML file. References are keyed
// by the node that holds them so that a value reached several times through
// anchors and aliases is reported once, at the place it is written, with
// the pulls of every use added up.
type yamlScanner struct {
	file string
	idx  *lineIndex
	refs []*Ref
	seen map[refKey]*Ref
	// ext holds the other files this one refers to (compose extends),
	// by path; their references are reported in those files.
	ext map[string]*extFile
}

// extFile is another YAML file reached from the one being scanned.
type extFile struct {
	scanner *yamlScanner
	root    *yaml.Node
	err     string
}

type refKey struct {
	node *yaml.Node
	off  int
}

func newYAMLScanner(file string, src []byte) *yamlScanner {
	return &yamlScanner{file: file, idx: newLineIndex(src, true), seen: map[refKey]*Ref{}, ext: map[string]*extFile{}}
}

// external loads the file at rel (relative to this file's directory) once.
func (s *yamlScanner) external(rel string) *extFile {
	p := filepath.Clean(filepath.Join(filepath.Dir(s.file), rel))
	if filepath.IsAbs(rel) {
		p = filepath.Clean(rel)
	}
	if ef, ok := s.ext[p]; ok {
		return ef
	}
	ef := &extFile{}
	s.ext[p] = ef
	src, err := os.ReadFile(p)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		ef.err = "extends file " + rel + ": " + err.Error()
		return ef
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		ef.err = "extends file " + rel + ": invalid YAML: " + err.Error()
		return ef
	}
	ef.root = &doc
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		ef.root = doc.Content[0]
	}
	ef.scanner = newYAMLScanner(p, src)
	ef.scanner.ext = s.ext // one set of files for the whole walk
	return ef
}

// problem reports something the scan could not follow, at node n.
func (s *yamlScanner) problem(n *yaml.Node, kind, original, msg string) {
	r := &Ref{File: s.file, Line: n.Line, Column: n.Column, Kind: kind, Original: original, Problem: msg}
	s.refs = append(s.refs, r)
}

// keyColumn returns the column of key in mapping m (0 if absent).
func keyColumn(m *yaml.Node, key string) int {
	for _, kv := range mapPairs(m) {
		if kv[0].Value == key {
			return kv[0].Column
		}
	}
	return 0
}

// insertAfterLine is a span that adds "key: <mapped ref>" as a new line
// after line, indented to column col, keeping the file's line endings.
func (s *yamlScanner) insertAfterLine(line, col int, format, ref string) *Span {
	text, start := s.idx.lineText(line)
	if start < 0 || col < 1 {
		return nil
	}
	eol := start + len(text)
	nl := "\n"
	if eol < len(s.idx.src) && s.idx.src[eol] == '\r' {
		nl = "\r\n"
	}
	return &Span{Start: eol, End: eol, Ref: ref, Format: nl + strings.Repeat(" ", col-1) + format}
}

// deref follows aliases.
func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// mapGet returns the value of key in mapping m, honouring merge keys ("<<")
// the way YAML does: explicit keys win over merged ones.
func mapGet(m *yaml.Node, key string) *yaml.Node {
	m = deref(m)
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key && m.Content[i].Tag != "!!merge" {
			return m.Content[i+1]
		}
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Tag == "!!merge" || m.Content[i].Value == "<<" {
			v := deref(m.Content[i+1])
			srcs := []*yaml.Node{v}
			if v != nil && v.Kind == yaml.SequenceNode {
				srcs = v.Content
			}
			for _, s := range srcs {
				if r := mapGet(s, key); r != nil {
					return r
				}
			}
		}
	}
	return nil
}

// mapPairs lists the explicit key/value pairs of a mapping.
func mapPairs(m *yaml.Node) [][2]*yaml.Node {
	m = deref(m)
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	var out [][2]*yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Tag == "!!merge" || m.Content[i].Value == "<<" {
			continue
		}
		out = append(out, [2]*yaml.Node{m.Content[i], m.Content[i+1]})
	}
	return out
}

func scalar(n *yaml.Node) (string, bool) {
	n = deref(n)
	if n == nil || n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return "", false
	}
	return n.Value, true
}

// valueOffset maps byte i of the scalar's value to its offset in the file.
// It returns -1 when the value is not written verbatim (escapes, folding),
// in which case the reference is reported but not rewritten.
func (s *yamlScanner) valueOffset(n *yaml.Node, i, length int) int {
	v := n.Value
	switch n.Style {
	case 0, yaml.TaggedStyle, yaml.FlowStyle:
		if strings.Contains(v, "\n") {
			return -1
		}
		off := s.idx.offset(n.Line, n.Column)
		if off < 0 || !strings.HasPrefix(string(s.idx.src[off:]), v) {
			return -1
		}
		return off + i
	case yaml.DoubleQuotedStyle, yaml.SingleQuotedStyle:
		off := s.idx.offset(n.Line, n.Column)
		if off < 0 || strings.Contains(v, "\n") || !strings.HasPrefix(string(s.idx.src[off+1:]), v) {
			return -1
		}
		if q := s.idx.src[off]; off+1+len(v) >= len(s.idx.src) || s.idx.src[off+1+len(v)] != q {
			return -1
		}
		return off + 1 + i
	case yaml.LiteralStyle:
		lines := strings.Split(v, "\n")
		pos := 0
		for li, l := range lines {
			if i >= pos && i+length <= pos+len(l) {
				src, start := s.idx.lineText(n.Line + 1 + li)
				if start < 0 || !strings.HasSuffix(src, l) {
					return -1
				}
				return start + len(src) - len(l) + (i - pos)
			}
			pos += len(l) + 1
		}
	}
	return -1
}

// add records text (a substring of scalar n at index i) as a reference,
// or adds weight to it when it was already reached through an alias.
// prep, if set, fills the reference itself; it gets the file offset of
// text (-1 when the scalar is not written verbatim).
func (s *yamlScanner) add(n *yaml.Node, i int, text, kind string, weight int, prep func(r *Ref, off int)) {
	key := refKey{n, i}
	if r, ok := s.seen[key]; ok {
		if r.DockerHub {
			r.PullsPerRun += weight
		}
		return
	}
	r := &Ref{File: s.file, Kind: kind, Original: text}
	off := s.valueOffset(n, i, len(text))
	if off >= 0 {
		r.Line, r.Column = s.idx.pos(off)
	} else {
		r.Line, r.Column = n.Line, n.Column
	}
	if prep != nil {
		prep(r, off)
	}
	if r.Registry == "" && r.Problem == "" {
		if spanLen := r.resolveLiteral(text); spanLen > 0 && off >= 0 {
			r.Span = &Span{Start: off, End: off + spanLen, Text: text[:spanLen]}
		}
	}
	if r.DockerHub {
		r.PullsPerRun = weight
	}
	s.seen[key] = r
	s.refs = append(s.refs, r)
}

// image records scalar n as an image reference.
func (s *yamlScanner) image(n *yaml.Node, kind string, weight int) {
	n = deref(n)
	v, ok := scalar(n)
	if !ok || strings.TrimSpace(v) == "" {
		return
	}
	s.add(n, 0, v, kind, weight, nil)
}

// script records docker pull/run images in a shell command scalar or a
// sequence of them. An image already pulled earlier in the same script is
// in the local store and costs no second pull.
func (s *yamlScanner) script(n *yaml.Node, kind string, weight int) {
	s.scriptSeen(n, kind, weight, map[string]bool{})
}

func (s *yamlScanner) scriptSeen(n *yaml.Node, kind string, weight int, pulled map[string]bool) {
	n = deref(n)
	if n == nil {
		return
	}
	if n.Kind == yaml.SequenceNode {
		for _, c := range n.Content {
			s.scriptSeen(c, kind, weight, pulled)
		}
		return
	}
	v, ok := scalar(n)
	if !ok {
		return
	}
	for _, sr := range shellImages(v) {
		w := weight
		var probe Ref
		probe.fill(sr.text)
		if probe.Normalized != "" {
			if pulled[probe.Normalized] {
				w = 0
			}
			pulled[probe.Normalized] = true
		}
		s.add(n, sr.index, sr.text, kind+" ("+sr.cmd+")", w, nil)
	}
}

// resolveLiteral fills r from text and returns how many leading bytes of
// text are a literal name[:tag][@digest] that may be rewritten (0: none).
// When only the tag is a variable, the literal name can still be rewritten.
func (r *Ref) resolveLiteral(text string) int {
	if !hasTemplate(text) {
		r.fill(text)
		if r.Problem != "" {
			return 0
		}
		return len(text)
	}
	r.fill(text) // records the template problem
	n := NameEnd(text)
	if n == 0 || hasTemplate(text[:n]) {
		r.Problem = "image name is a template or variable; cannot rewrite safely"
		return 0
	}
	var partial Ref
	partial.fill(text[:n])
	if partial.Problem != "" {
		return 0
	}
	r.Registry, r.DockerHub, r.Official = partial.Registry, partial.DockerHub, partial.Official
	r.Problem = "tag is a template or variable; only the name can be rewritten"
	return n
}

func (s *yamlScanner) result() []Ref {
	out := make([]Ref, 0, len(s.refs))
	for _, r := range s.refs {
		out = append(out, *r)
	}
	for _, p := range slices.Sorted(maps.Keys(s.ext)) {
		if ef := s.ext[p]; ef.scanner != nil && ef.scanner != s {
			for _, r := range ef.scanner.refs {
				out = append(out, *r)
			}
		}
	}
	return out
}

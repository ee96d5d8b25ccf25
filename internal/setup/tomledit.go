package setup

import (
	"fmt"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// TOML files are edited with go-toml's unstable parser: it reports the byte
// position of every key, which is enough to find the lines of each table
// and key/value. regcache then replaces or inserts only the lines of the
// keys it owns, so comments, ordering and formatting of everything else
// survive byte for byte. (go-toml's Marshal and BurntSushi/toml both drop
// comments on a round trip, which would violate "comments survive".) After
// every edit the whole document is decoded again to prove it is still valid
// TOML with the intended values.

// tomlExpr is one top-level expression: a [table], a [[array table]] or a
// key = value line (possibly spanning lines).
type tomlExpr struct {
	kind  unstable.Kind
	key   []string
	start int // offset of the start of its first line
	end   int // offset just past its last line's newline
	// indent of the first line.
	indent string
	// text is the expression's source without surrounding space.
	text string
	// strs holds the value of a string or array-of-strings key/value.
	strs  []string
	isStr bool
}

type tomlDoc struct {
	src   []byte
	exprs []tomlExpr
}

func parseTOML(src []byte) (*tomlDoc, error) {
	var p unstable.Parser
	p.Reset(src)
	d := &tomlDoc{src: src}
	for p.NextExpression() {
		n := p.Expression()
		e := tomlExpr{kind: n.Kind}
		first := -1
		it := n.Key()
		for it.Next() {
			k := it.Node()
			if first < 0 {
				first = int(k.Raw.Offset)
			}
			e.key = append(e.key, string(k.Data))
		}
		if first < 0 {
			continue
		}
		e.start = lineStart(src, first)
		e.indent = string(src[e.start:first])
		if n.Kind != unstable.KeyValue {
			e.indent = strings.TrimRight(e.indent, "[")
		}
		if n.Kind == unstable.KeyValue {
			v := n.Value()
			switch v.Kind {
			case unstable.String:
				e.isStr = true
				e.strs = []string{string(v.Data)}
			case unstable.Array:
				ai := v.Children()
				for ai.Next() {
					if c := ai.Node(); c.Kind == unstable.String {
						e.strs = append(e.strs, string(c.Data))
					}
				}
			}
		}
		d.exprs = append(d.exprs, e)
	}
	if err := p.Error(); err != nil {
		var perr *unstable.ParserError
		msg := err.Error()
		if pe, ok := err.(*unstable.ParserError); ok {
			perr = pe
			line := 1 + strings.Count(string(src[:p.Range(perr.Highlight).Offset]), "\n")
			msg = fmt.Sprintf("line %d: %s", line, perr.Message)
		}
		return nil, fmt.Errorf("invalid TOML: %s", msg)
	}
	// An expression ends where the next begins, minus the blank and comment
	// lines in between (those belong to what follows).
	for i := range d.exprs {
		end := len(src)
		if i+1 < len(d.exprs) {
			end = d.exprs[i+1].start
		}
		d.exprs[i].end = trimTrailingComments(src, d.exprs[i].start, end)
		d.exprs[i].text = strings.TrimSpace(string(src[d.exprs[i].start:d.exprs[i].end]))
	}
	return d, nil
}

func lineStart(src []byte, off int) int {
	for off > 0 && src[off-1] != '\n' {
		off--
	}
	return off
}

// trimTrailingComments moves end back over whole lines that are blank or
// only a comment, but never before the first line of the expression.
func trimTrailingComments(src []byte, start, end int) int {
	firstEnd := strings.IndexByte(string(src[start:end]), '\n')
	if firstEnd < 0 {
		return end
	}
	firstEnd += start + 1
	for end > firstEnd {
		ls := lineStart(src, end-1)
		line := strings.TrimSpace(string(src[ls:end]))
		if line != "" && !strings.HasPrefix(line, "#") {
			break
		}
		end = ls
	}
	return end
}

func keyEq(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// find returns the indices of headers of kind with key.
func (d *tomlDoc) find(kind unstable.Kind, key ...string) []int {
	var out []int
	for i, e := range d.exprs {
		if e.kind == kind && keyEq(e.key, key) {
			out = append(out, i)
		}
	}
	return out
}

// section returns the key/value expressions under header h (-1: the root
// table before any header) and the index of the next header.
func (d *tomlDoc) section(h int) (kvs []int, next int) {
	for i := h + 1; i < len(d.exprs); i++ {
		if d.exprs[i].kind != unstable.KeyValue {
			return kvs, i
		}
		kvs = append(kvs, i)
	}
	return kvs, len(d.exprs)
}

// kv finds key (a single bare key) in the section of header h.
func (d *tomlDoc) kv(h int, key string) (int, bool) {
	kvs, _ := d.section(h)
	for _, i := range kvs {
		if keyEq(d.exprs[i].key, []string{key}) {
			return i, true
		}
	}
	return -1, false
}

// setKV makes key = value appear in the section of header h. keep says
// whether an existing value is already right; then nothing changes.
func (d *tomlDoc) setKV(h int, key, value string, keep func(tomlExpr) bool) []byte {
	if i, ok := d.kv(h, key); ok {
		e := d.exprs[i]
		if keep != nil && keep(e) {
			return d.src
		}
		return splice(d.src, e.start, e.end, e.indent+tomlKey(key)+" = "+value+"\n")
	}
	kvs, _ := d.section(h)
	indent, at := "", 0
	switch {
	case len(kvs) > 0:
		last := d.exprs[kvs[len(kvs)-1]]
		indent, at = last.indent, last.end
	case h >= 0:
		hdr := d.exprs[h]
		indent = hdr.indent + "  "
		at = hdr.start + strings.IndexByte(string(d.src[hdr.start:]), '\n') + 1
		if at <= hdr.start {
			at = len(d.src)
		}
	}
	line := indent + tomlKey(key) + " = " + value + "\n"
	if at == len(d.src) && at > 0 && d.src[at-1] != '\n' {
		line = "\n" + line
	}
	return splice(d.src, at, at, line)
}

func splice(src []byte, start, end int, text string) []byte {
	out := make([]byte, 0, len(src)+len(text))
	out = append(out, src[:start]...)
	out = append(out, text...)
	return append(out, src[end:]...)
}

// appendBlock adds a block of lines at the end, separated by a blank line.
func appendBlock(src []byte, block string) []byte {
	s := string(src)
	switch {
	case s == "":
	case strings.HasSuffix(s, "\n\n"):
	case strings.HasSuffix(s, "\n"):
		s += "\n"
	default:
		s += "\n\n"
	}
	return []byte(s + block)
}

// insertBlock puts block before the expression at index i, followed by a
// blank line.
func (d *tomlDoc) insertBlock(i int, block string) []byte {
	at := d.exprs[i].start
	// keep comments that introduce expression i attached to it
	for at > 0 {
		ls := lineStart(d.src, at-1)
		if !strings.HasPrefix(strings.TrimSpace(string(d.src[ls:at])), "#") {
			break
		}
		at = ls
	}
	return splice(d.src, at, at, block+"\n")
}

func tomlKey(k string) string {
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return tomlString(k)
		}
	}
	return k
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func tomlStrings(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = tomlString(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// decodeTOML validates src and returns its generic value.
func decodeTOML(src []byte) (map[string]any, error) {
	var m map[string]any
	if err := toml.Unmarshal(src, &m); err != nil {
		return nil, fmt.Errorf("result is not valid TOML (%v); edit this file by hand", err)
	}
	return m, nil
}

// lookup walks nested tables of a decoded document.
func lookup(m map[string]any, keys ...string) any {
	var cur any = m
	for _, k := range keys {
		t, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = t[k]
	}
	return cur
}

func hasAll(have []string, want ...string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			if h == w {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

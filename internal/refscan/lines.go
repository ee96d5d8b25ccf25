package refscan

import (
	"sort"
	"unicode/utf8"
)

// lineIndex converts between byte offsets and 1-based line/column
// positions. Columns count runes, as yaml.v3 does.
type lineIndex struct {
	src    []byte
	starts []int
	cr     bool // a lone carriage return ends a line
}

// newLineIndex indexes src's lines. YAML counts a carriage return not
// followed by a newline as a line break, as old Mac files have them, so
// the YAML scanners pass cr to agree with yaml.v3's positions; a
// Dockerfile's lines end at newlines only, as BuildKit reads them.
func newLineIndex(src []byte, cr bool) *lineIndex {
	starts := []int{0}
	for i, b := range src {
		if b == '\n' || (cr && b == '\r' && (i+1 == len(src) || src[i+1] != '\n')) {
			starts = append(starts, i+1)
		}
	}
	return &lineIndex{src: src, starts: starts, cr: cr}
}

func (x *lineIndex) lineBreak(b byte) bool { return b == '\n' || (x.cr && b == '\r') }

func (x *lineIndex) pos(off int) (line, col int) {
	l := sort.Search(len(x.starts), func(i int) bool { return x.starts[i] > off }) - 1
	return l + 1, utf8.RuneCount(x.src[x.starts[l]:off]) + 1
}

// offset returns the byte offset of a 1-based line and rune column, or -1.
func (x *lineIndex) offset(line, col int) int {
	if line < 1 || line > len(x.starts) {
		return -1
	}
	off := x.starts[line-1]
	for c := 1; c < col; c++ {
		if off >= len(x.src) || x.lineBreak(x.src[off]) {
			return -1
		}
		_, n := utf8.DecodeRune(x.src[off:])
		off += n
	}
	return off
}

// lineText returns line (1-based) without its newline.
func (x *lineIndex) lineText(line int) (string, int) {
	if line < 1 || line > len(x.starts) {
		return "", -1
	}
	start := x.starts[line-1]
	end := len(x.src)
	if line < len(x.starts) {
		end = x.starts[line] - 1
	}
	s := string(x.src[start:end])
	if len(s) > 0 && s[len(s)-1] == '\r' {
		s = s[:len(s)-1]
	}
	return s, start
}

package refscan

import (
	"regexp"
	"strconv"
	"strings"
)

// logicalLine is one Dockerfile instruction after joining continuation
// lines. off maps every byte of text to its offset in the file, so tokens can
// be traced back to the exact bytes a rewrite replaces.
type logicalLine struct {
	text string
	off  []int
	line int // 1-based line of the first byte
}

// token is a whitespace-separated word of a logical line.
type token struct {
	text  string
	start int // index into logicalLine.text
}

var (
	escapeDirective = regexp.MustCompile(`(?i)^#\s*escape\s*=\s*(\S)\s*$`)
	anyDirective    = regexp.MustCompile(`^#\s*[a-zA-Z][a-zA-Z0-9]*\s*=`)
	heredocMarker   = regexp.MustCompile(`<<(-?)\s*(["']?)([A-Za-z_][A-Za-z0-9_]*)(["']?)`)
	dfVar           = regexp.MustCompile(`\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))`)
)

// splitDockerfile turns src into logical instructions, handling parser
// directives, comments, line continuations and heredocs (whose bodies are not
// instructions and must not be scanned).
func splitDockerfile(src []byte) []logicalLine {
	type physLine struct {
		start int
		text  string
	}
	var lines []physLine
	for start := 0; start < len(src); {
		end := strings.IndexByte(string(src[start:]), '\n')
		next := len(src)
		if end < 0 {
			end = len(src)
		} else {
			end += start
			next = end + 1
		}
		lines = append(lines, physLine{start, strings.TrimSuffix(string(src[start:end]), "\r")})
		start = next
	}

	escape := byte('\\')
	i := 0
	// Parser directives are only recognised before anything else.
	for ; i < len(lines); i++ {
		t := strings.TrimSpace(lines[i].text)
		if m := escapeDirective.FindStringSubmatch(t); m != nil {
			escape = m[1][0]
			continue
		}
		if anyDirective.MatchString(t) {
			continue
		}
		break
	}

	var out []logicalLine
	var cur *logicalLine
	for ; i < len(lines); i++ {
		pl := lines[i]
		trimmed := strings.TrimLeft(pl.text, " \t")
		if cur == nil && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur != nil && strings.HasPrefix(trimmed, "#") {
			// Comment lines inside a continuation are dropped by Docker.
			continue
		}
		if cur == nil {
			cur = &logicalLine{line: i + 1}
		}
		text := pl.text
		body := strings.TrimRight(text, " \t")
		continued := len(body) > 0 && body[len(body)-1] == escape
		if continued {
			text = body[:len(body)-1]
		}
		for j := 0; j < len(text); j++ {
			cur.text += string(text[j])
			cur.off = append(cur.off, pl.start+j)
		}
		if continued {
			continue
		}
		out = append(out, *cur)
		// Skip heredoc bodies of this instruction.
		for _, m := range heredocMarker.FindAllStringSubmatch(cur.text, -1) {
			word, dash := m[3], m[1] == "-"
			for i+1 < len(lines) {
				i++
				l := lines[i].text
				if dash {
					l = strings.TrimLeft(l, "\t")
				}
				if l == word {
					break
				}
			}
		}
		cur = nil
	}
	if cur != nil {
		out = append(out, *cur)
	}
	return out
}

func tokenize(s string) []token {
	var toks []token
	for i := 0; i < len(s); {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
			i++
		}
		j := i
		for j < len(s) && s[j] != ' ' && s[j] != '\t' {
			j++
		}
		if j > i {
			toks = append(toks, token{s[i:j], i})
		}
		i = j
	}
	return toks
}

// argValue is a Dockerfile ARG as seen at one point of the file.
type argValue struct {
	value   string
	hasDflt bool
	line    int
}

// expandArgs substitutes ARG values into s. It returns the names of
// variables that have no value (unresolvable without --build-arg).
func expandArgs(s string, args map[string]argValue) (string, []string) {
	var missing []string
	out := dfVar.ReplaceAllStringFunc(s, func(m string) string {
		sm := dfVar.FindStringSubmatch(m)
		name := sm[1]
		if name == "" {
			name = sm[4]
		}
		a, ok := args[name]
		set := ok && a.hasDflt
		switch sm[2] {
		case ":-", "-":
			if !set || (sm[2] == ":-" && a.value == "") {
				return sm[3]
			}
		case ":+", "+":
			if set && (sm[2] == "+" || a.value != "") {
				return sm[3]
			}
			return ""
		}
		if !set {
			missing = append(missing, name)
			return m
		}
		return a.value
	})
	return out, missing
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}

// scanDockerfile finds FROM and COPY --from image references.
func scanDockerfile(file string, src []byte, platforms int) []Ref {
	idx := newLineIndex(src)
	var refs []Ref
	global := map[string]argValue{}
	var stage map[string]argValue
	stages := map[string]bool{}
	seen := map[string]bool{}

	add := func(ll logicalLine, tok token, kind, platform string, args map[string]argValue, argScope string) {
		r := Ref{File: file, Kind: kind, Original: tok.text, Platform: platform}
		r.Line, r.Column = idx.pos(ll.off[tok.start])
		expanded, missing := expandArgs(tok.text, args)
		if len(missing) > 0 {
			r.Problem = "ARG " + strings.Join(missing, ", ") + " has no default " + argScope + "; set only by --build-arg"
		} else if expanded != tok.text {
			r.Resolved = expanded
			var used []string
			for _, m := range dfVar.FindAllStringSubmatch(tok.text, -1) {
				name := m[1] + m[4]
				if a, ok := args[name]; ok && a.hasDflt {
					used = append(used, "ARG "+name+" (line "+strconv.Itoa(a.line)+")")
				} else {
					used = append(used, "the fallback in "+m[0])
				}
			}
			r.Note = "resolved with " + strings.Join(used, ", ")
		}
		if r.Problem == "" && stages[strings.ToLower(expanded)] {
			return // an ARG that names an earlier stage
		}
		if r.Problem == "" {
			r.fill(expanded)
		} else if n := NameEnd(tok.text); !strings.Contains(tok.text[:n], "$") {
			// Only the tag is unknown: the registry still is.
			var partial Ref
			partial.fill(tok.text[:n])
			r.Registry, r.DockerHub, r.Official = partial.Registry, partial.DockerHub, partial.Official
		}
		r.Span = dockerfileSpan(ll, tok, &r)
		if r.DockerHub {
			n := platforms
			if platform != "" && !strings.Contains(platform, "TARGET") {
				n = 1 // a fixed platform or $BUILDPLATFORM is a single one
			}
			key := r.Normalized
			if key == "" {
				key = tok.text // tag unknown: only the same text is surely the same image
			}
			key += "|" + platform
			if !seen[key] {
				seen[key] = true
				r.PullsPerRun = n
			}
		}
		refs = append(refs, r)
	}

	for _, ll := range splitDockerfile(src) {
		toks := tokenize(ll.text)
		if len(toks) == 0 {
			continue
		}
		switch strings.ToUpper(toks[0].text) {
		case "ARG":
			target := global
			if stage != nil {
				target = stage
			}
			for _, t := range toks[1:] {
				name, val, has := strings.Cut(t.text, "=")
				a := argValue{value: unquote(val), hasDflt: has, line: ll.line}
				if !has && stage != nil {
					// A global ARG redeclared without a value inherits it.
					if g, ok := global[name]; ok {
						a = g
					}
				}
				target[name] = a
			}
		case "FROM":
			stage = map[string]argValue{}
			rest := toks[1:]
			platform := ""
			for len(rest) > 0 && strings.HasPrefix(rest[0].text, "--") {
				if v, ok := strings.CutPrefix(rest[0].text, "--platform="); ok {
					platform = v
				}
				rest = rest[1:]
			}
			if len(rest) == 0 {
				continue
			}
			img := rest[0]
			lower := strings.ToLower(img.text)
			if lower == "scratch" || stages[lower] {
				registerStage(stages, rest)
				continue
			}
			add(ll, img, "dockerfile FROM", platform, global, "before the first FROM")
			registerStage(stages, rest)
		case "COPY":
			for _, t := range toks[1:] {
				if !strings.HasPrefix(t.text, "--") {
					break
				}
				v, ok := strings.CutPrefix(t.text, "--from=")
				if !ok {
					continue
				}
				if _, err := strconv.Atoi(v); err == nil || stages[strings.ToLower(v)] {
					continue // a stage, not an image
				}
				t.text = v
				t.start += len("--from=")
				add(ll, t, "dockerfile COPY --from", "", stage, "in this stage")
			}
		}
	}
	return refs
}

// registerStage records the AS name of a FROM, after its image was looked
// at: "FROM node AS node" names a stage but pulls the image.
func registerStage(stages map[string]bool, rest []token) {
	if len(rest) >= 3 && strings.EqualFold(rest[1].text, "AS") {
		stages[strings.ToLower(rest[2].text)] = true
	}
}

// dockerfileSpan decides which literal bytes a rewrite may replace. A fully
// literal reference is replaced whole. When only the tag or digest comes
// from an ARG, the literal name before it can still be rewritten safely.
func dockerfileSpan(ll logicalLine, tok token, r *Ref) *Span {
	if r.Registry == "" {
		return nil
	}
	text := tok.text
	n := len(text)
	if i := strings.IndexByte(text, '$'); i >= 0 {
		n = NameEnd(text)
		if n > i || n == 0 {
			r.Problem = "image name is built from an ARG; rewrite the ARG default by hand"
			return nil
		}
	}
	start, end := ll.off[tok.start], ll.off[tok.start+n-1]+1
	if end-start != n {
		return nil // split across a line continuation
	}
	return &Span{Start: start, End: end, Text: text[:n]}
}

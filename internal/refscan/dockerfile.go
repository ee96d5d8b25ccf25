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
	syntaxDirective = regexp.MustCompile(`(?i)^\s*#\s*syntax\s*=\s*(\S+)\s*$`)
	anyDirective    = regexp.MustCompile(`^#\s*[a-zA-Z][a-zA-Z0-9]*\s*=`)
	heredocMarker   = regexp.MustCompile(`<<(-?)\s*(["']?)([A-Za-z_][A-Za-z0-9_]*)(["']?)`)
	dfVar           = regexp.MustCompile(`\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))`)
)

// splitDockerfile turns src into logical instructions, handling parser
// directives, comments, line continuations and heredocs (whose bodies are not
// instructions and must not be scanned). syntax is the value of a
// "# syntax=" directive (the BuildKit frontend image), nil without one.
func splitDockerfile(src []byte) (out []logicalLine, syntax *logicalLine) {
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
		if m := syntaxDirective.FindStringSubmatchIndex(lines[i].text); m != nil && syntax == nil {
			pl := lines[i]
			syntax = &logicalLine{text: pl.text[m[2]:m[3]], line: i + 1}
			for j := m[2]; j < m[3]; j++ {
				syntax.off = append(syntax.off, pl.start+j)
			}
			continue
		}
		if anyDirective.MatchString(t) {
			continue
		}
		break
	}

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
	return out, syntax
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
	// span is the literal default in the file, nil when it is not written
	// as one contiguous (optionally quoted) string.
	span *Span
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

// wholeArg returns the name of the ARG when s is exactly "$NAME" or
// "${NAME}", with no operator: the image is the ARG's value, unchanged.
func wholeArg(s string) string {
	m := dfVar.FindStringSubmatchIndex(s)
	if m == nil || m[0] != 0 || m[1] != len(s) || m[4] >= 0 {
		return ""
	}
	if m[2] >= 0 {
		return s[m[2]:m[3]]
	}
	return s[m[8]:m[9]]
}

// argSpan locates the default of "NAME=value" (tok, on ll) in the file.
func argSpan(ll logicalLine, tok token, name, raw string) *Span {
	start := tok.start + len(name) + 1
	v := raw
	if u := unquote(raw); u != raw {
		v, start = u, start+1
	}
	if v == "" || start+len(v) > len(ll.off) {
		return nil
	}
	from, to := ll.off[start], ll.off[start+len(v)-1]+1
	if to-from != len(v) {
		return nil // split across a line continuation
	}
	return &Span{Start: from, End: to, Text: v}
}

// scanDockerfile finds the image references of a Dockerfile: the BuildKit
// frontend of "# syntax=", FROM, COPY --from and RUN --mount=...,from=.
func scanDockerfile(file string, src []byte, platforms int) []Ref {
	idx := newLineIndex(src, false)
	var refs []Ref
	global := map[string]argValue{}
	var stage map[string]argValue
	stages := map[string]bool{}
	seen := map[string]bool{}
	// viaArg[i] is the ARG that refs[i] names whole ("FROM ${BASE}");
	// imageUse counts, per ARG name, the places where it is used like that.
	// Its default may be rewritten only when every use of the name in the
	// file is such a place.
	viaArg := map[int]argValue{}
	imageUse := map[string]int{}

	// perPlatform: the image is resolved once per target platform (a
	// stage's base, content copied into it); the frontend is resolved once.
	add := func(ll logicalLine, tok token, kind, platform string, perPlatform bool, args map[string]argValue, argScope string) {
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
			n := 1
			if perPlatform && (platform == "" || strings.Contains(platform, "TARGET")) {
				n = platforms // a fixed platform or $BUILDPLATFORM is a single one
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
		if name := wholeArg(tok.text); name != "" {
			imageUse[name]++
			if a, ok := args[name]; ok && a.hasDflt && len(missing) == 0 {
				viaArg[len(refs)] = a
			}
		}
		refs = append(refs, r)
	}

	lines, syntax := splitDockerfile(src)
	if syntax != nil {
		// BuildKit resolves the frontend image before it reads the rest
		// of the file, on every build that does not have it yet.
		add(*syntax, token{syntax.text, 0}, "dockerfile syntax", "", false, nil, "")
	}
	for _, ll := range lines {
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
				if has {
					a.span = argSpan(ll, t, name, val)
				}
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
			add(ll, img, "dockerfile FROM", platform, true, global, "before the first FROM")
			registerStage(stages, rest)
		case "COPY":
			for _, t := range toks[1:] {
				if !strings.HasPrefix(t.text, "--") {
					break
				}
				v, ok := strings.CutPrefix(t.text, "--from=")
				if !ok || v == "" {
					// An empty --from= names nothing (a fuzzer found it
					// at the end of a file).
					continue
				}
				if isStage(stages, v) {
					continue
				}
				t.text = v
				t.start += len("--from=")
				add(ll, t, "dockerfile COPY --from", "", true, stage, "in this stage")
			}
		case "RUN":
			for _, t := range toks[1:] {
				if !strings.HasPrefix(t.text, "--") {
					break
				}
				if from, ok := mountFrom(t); ok && !isStage(stages, from.text) {
					add(ll, from, "dockerfile RUN --mount from", "", true, stage, "in this stage")
				}
			}
		}
	}
	// An ARG default that is a complete reference, used only as a whole
	// image name, is the reference: rewrite it there.
	// Uses are counted in the whole text, heredocs and comments included:
	// a use that is not an image must never be missed.
	used := map[string]int{}
	for _, m := range dfVar.FindAllStringSubmatch(string(src), -1) {
		used[m[1]+m[4]]++
	}
	for i, a := range viaArg {
		r := &refs[i]
		name := wholeArg(r.Original)
		switch {
		case a.span == nil || strings.Contains(a.value, "$"):
			r.Problem = "image name is the ARG " + name + ", whose default is not one literal reference; rewrite it by hand"
		case used[name] != imageUse[name]:
			r.Problem = "image name is the ARG " + name + ", which is also used for other things; rewrite its default by hand"
		default:
			r.Problem = ""
			r.Span = a.span
			r.Note += "; rewrite changes the ARG default (--build-arg " + name + "=... still overrides it)"
		}
	}
	return refs
}

// isStage reports whether a --from value names a build stage (by name or
// index) rather than an image.
func isStage(stages map[string]bool, v string) bool {
	if _, err := strconv.Atoi(v); err == nil {
		return true
	}
	return stages[strings.ToLower(v)]
}

// mountFrom returns the from= value of a RUN --mount=... flag, as a token
// of the same logical line. The flag is CSV (type=cache,from=img,...);
// quoted fields are unquoted.
func mountFrom(t token) (token, bool) {
	v, ok := strings.CutPrefix(t.text, "--mount=")
	if !ok {
		return token{}, false
	}
	base := t.start + len("--mount=")
	for off := 0; off <= len(v); {
		end := strings.IndexByte(v[off:], ',')
		if end < 0 {
			end = len(v)
		} else {
			end += off
		}
		field := v[off:end]
		if val, ok := strings.CutPrefix(field, "from="); ok && val != "" {
			start := base + off + len("from=")
			if u := unquote(val); u != val {
				val, start = u, start+1
			}
			return token{val, start}, true
		}
		off = end + 1
	}
	return token{}, false
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

package refscan

import (
	"regexp"
	"strings"
)

// composeVar matches one of compose's interpolations without another
// inside it: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
// ${VAR?error} and $VAR. Nested ones (${A:-${B:-x}}) are expanded from the
// inside out.
var composeVar = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}$]*)|:?\?[^}$]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// expandCompose substitutes the defaults of s's compose variables ($$ is a
// literal $). missing lists the variables that have none, which only the
// environment sets.
func expandCompose(s string) (expanded string, used, missing []string) {
	const dollar = "\x00" // stands for $$ while expanding
	cur := strings.ReplaceAll(s, "$$", dollar)
	for range 8 {
		var miss []string
		next := composeVar.ReplaceAllStringFunc(cur, func(m string) string {
			sub := composeVar.FindStringSubmatch(m)
			if sub[2] != "" {
				used = append(used, m)
				return sub[3]
			}
			miss = append(miss, sub[1]+sub[4])
			return m
		})
		if len(miss) > 0 || next == cur {
			cur, missing = next, miss
			break
		}
		cur = next
	}
	return strings.ReplaceAll(cur, dollar, "$"), used, missing
}

// composeDefaults resolves a compose image that uses variables with
// defaults, as `docker compose` does when they are unset: that is what a
// CI job pulls unless it sets them, so it is what scan counts. The name
// part is never rewritten when it comes from a variable.
func composeDefaults(text string) func(r *Ref, off int) {
	return func(r *Ref, off int) {
		if !strings.Contains(text, "$") {
			return
		}
		expanded, used, missing := expandCompose(text)
		if len(missing) > 0 || len(used) == 0 {
			return // the generic template handling applies
		}
		r.Resolved = expanded
		r.Note = "resolved with the default of " + strings.Join(used, ", ")
		r.fill(expanded)
		if r.Problem != "" || off < 0 {
			return
		}
		n := NameEnd(text)
		if strings.Contains(text[:n], "$") {
			r.Problem = "image name comes from a compose variable; change its default by hand"
			return
		}
		r.Span = &Span{Start: off, End: off + n, Text: text[:n]}
	}
}

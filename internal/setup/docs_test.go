package setup

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"regexp"
	"strings"
	"testing"

	"github.com/regcache/regcache/internal/refscan"
)

// The docs show what setup prints between markers:
//
//	<!-- setup: docker --server http://cache.internal:5000 -->
//	...generated...
//	<!-- end setup -->
//
// TestDocsMatchGenerator regenerates every such block from the same code
// the command runs and fails when the docs drift; -update rewrites them.
// The prose around them is written by hand.
var docMarker = regexp.MustCompile(`(?s)<!-- setup: ([^>]*?) -->\n.*?<!-- end setup -->`)

func TestDocsMatchGenerator(t *testing.T) {
	const file = "../../docs/ci-integration.md"
	doc, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var failed []string
	out := docMarker.ReplaceAllFunc(doc, func(m []byte) []byte {
		n++
		args := string(docMarker.FindSubmatch(m)[1])
		block, err := docBlock(args)
		if err != nil {
			t.Errorf("<!-- setup: %s -->: %v", args, err)
			return m
		}
		want := "<!-- setup: " + args + " -->\n" + block + "<!-- end setup -->"
		if string(m) != want {
			failed = append(failed, args)
		}
		return []byte(want)
	})
	if n == 0 {
		t.Fatal("no generated blocks in " + file)
	}
	if !bytes.Contains(doc, []byte(refscan.PullEstimateHelp)) {
		t.Errorf("%s does not quote refscan.PullEstimateHelp as it is", file)
	}
	covered := map[string]bool{}
	for _, m := range docMarker.FindAllSubmatch(doc, -1) {
		covered[strings.Fields(string(m[1]))[0]] = true
	}
	for _, tg := range Targets() {
		if !covered[tg.Name] {
			t.Errorf("%s shows no output of regcache setup %s", file, tg.Name)
		}
	}
	if *update {
		if err := os.WriteFile(file, out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	for _, a := range failed {
		t.Errorf("%s: the output of regcache setup %s differs from what the command prints; rerun with -update and review the diff", file, a)
	}
}

// TestReadmeListsTargets: the README's command summary names every target.
func TestReadmeListsTargets(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tg := range Targets() {
		names = append(names, tg.Name)
	}
	want := "regcache setup <" + strings.Join(names, "|") + ">"
	if !bytes.Contains(readme, []byte(want)) {
		t.Errorf("README.md does not list the setup targets as %q", want)
	}
}

// docBlock renders "target --flag value ..." the way the docs show it.
func docBlock(args string) (string, error) {
	f := strings.Fields(args)
	tg, ok := Lookup(f[0])
	if !ok {
		return "", fmt.Errorf("unknown target %q", f[0])
	}
	var o Options
	for i := 1; i < len(f); i++ {
		flag := f[i]
		val := func() string {
			if i+1 < len(f) {
				i++
				return f[i]
			}
			return ""
		}
		switch flag {
		case "--server":
			o.Server = val()
		case "--ca-file":
			o.CAFile = val()
		case "--username":
			o.Username = val()
		case "--password-env":
			o.PasswordEnv = val()
		case "--registries":
			o.Registries = strings.Split(val(), ",")
		case "--path":
			o.Path = val()
		case "--hosts-toml":
			o.HostsTOML = true
		case "--insecure":
			o.Insecure = true
		default:
			return "", fmt.Errorf("flag %s is not supported in docs", flag)
		}
	}
	p, err := tg.Build(o)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "`regcache setup %s` prints:\n\n", args)
	for _, fl := range p.Files {
		data, err := fl.Merge(nil)
		if err != nil {
			return "", err
		}
		lang := map[string]string{".json": "json", ".toml": "toml", ".yaml": "yaml", ".conf": "toml", ".crt": "text"}[path.Ext(fl.Path)]
		fmt.Fprintf(&b, "`%s`:\n\n```%s\n%s```\n\n", fl.Path, lang, data)
	}
	for _, s := range p.Snippets {
		fmt.Fprintf(&b, "`%s`:\n\n```%s\n%s\n```\n\n", s.Title, s.Lang, strings.TrimRight(s.Body, "\n"))
	}
	// Notes are bullets; indented notes (command lines, config lines)
	// continue the bullet before them as a text block.
	for i := 0; i < len(p.Notes); i++ {
		note := p.Notes[i]
		if !strings.HasPrefix(note, " ") {
			fmt.Fprintf(&b, "- %s\n", note)
			continue
		}
		b.WriteString("\n  ```text\n")
		for ; i < len(p.Notes) && strings.HasPrefix(p.Notes[i], " "); i++ {
			fmt.Fprintf(&b, "  %s\n", p.Notes[i])
		}
		b.WriteString("  ```\n\n")
		i--
	}
	if len(p.Notes) > 0 {
		b.WriteString("\n")
	}
	return b.String(), nil
}

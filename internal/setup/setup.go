package setup

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/regcache/regcache/internal/rewrite"
)

// Options are the command-line choices common to all targets.
type Options struct {
	// Server is the regcache address: http://host:port, https://host or
	// host:port (then http when Insecure, else https).
	Server string
	// Insecure means plain HTTP or a certificate clients cannot verify.
	Insecure bool
	// Registries whose pulls go through regcache; default docker.io.
	Registries []string
	// Root prefixes the standard install paths (tests, chroots, images).
	Root string
	// Path replaces the standard path of the target's main file (or
	// directory, for containerd's certs.d).
	Path string
	// CAFile is the PEM certificate of the CA that signed regcache's TLS
	// certificate, for clients that do not trust it already.
	CAFile string
}

// server is the parsed Server option.
type server struct {
	scheme string // http or https
	host   string // host[:port]
	// insecure: clients must allow http or skip TLS verification.
	insecure bool
	// ca is the absolute path of the CA certificate clients should trust,
	// caPEM its content; empty without --ca-file.
	ca    string
	caPEM []byte
}

func (s server) url() string { return s.scheme + "://" + s.host }

func (o Options) server() (server, error) {
	raw := o.Server
	if raw == "" {
		return server{}, errors.New("--server is required")
	}
	if !strings.Contains(raw, "://") {
		scheme := "https"
		if o.Insecure {
			scheme = "http"
		}
		raw = scheme + "://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || strings.Trim(u.Path, "/") != "" {
		return server{}, fmt.Errorf("--server %q: want http://host:port, https://host or host:port", o.Server)
	}
	s := server{scheme: u.Scheme, host: u.Host, insecure: u.Scheme == "http" || o.Insecure}
	if o.CAFile != "" {
		if s.scheme != "https" {
			return server{}, fmt.Errorf("--ca-file: the server %s is plain http; a CA is only for https", s.url())
		}
		if o.Insecure {
			return server{}, errors.New("--ca-file and --insecure: give one, not both (with the CA, clients can verify the server)")
		}
		if s.ca, s.caPEM, err = readCA(o.CAFile); err != nil {
			return server{}, fmt.Errorf("--ca-file %s: %w", o.CAFile, err)
		}
	}
	return s, nil
}

// readCA reads a PEM file that must hold at least one certificate and
// nothing else, and returns its absolute path and content.
func readCA(path string) (string, []byte, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", nil, err
	}
	data, err := os.ReadFile(abs)
	if err != nil {
		return "", nil, err
	}
	rest, n := data, 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return "", nil, fmt.Errorf("holds a %s block; want only certificates (never a private key)", b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return "", nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		n++
	}
	if n == 0 {
		return "", nil, errors.New("no PEM certificate in it")
	}
	return abs, data, nil
}

// filePlan is the plan of a target that edits one file, at std (or
// --path), with merge for the server the options name.
func (o Options) filePlan(std string, merge func(existing []byte, s server) ([]byte, error)) (Plan, server, error) {
	s, err := o.server()
	if err != nil {
		return Plan{}, s, err
	}
	return Plan{Files: []File{{
		Path:  o.path(std),
		Merge: func(b []byte) ([]byte, error) { return merge(b, s) },
	}}}, s, nil
}

// caFile is the file that makes docker or podman trust regcache's CA: they
// read <dir>/<host:port>/*.crt (dir is /etc/docker/certs.d or
// /etc/containers/certs.d).
func (o Options) caFile(s server, dir string) []File {
	if s.ca == "" {
		return nil
	}
	return []File{{
		Path:  filepath.Join(o.root(), dir, s.host, "regcache-ca.crt"),
		Merge: func([]byte) ([]byte, error) { return s.caPEM, nil },
	}}
}

func (o Options) registries() []string {
	if len(o.Registries) == 0 {
		return []string{"docker.io"}
	}
	return o.Registries
}

// path returns the install path: Path if set, else std under Root.
func (o Options) path(std string) string {
	if o.Path != "" {
		return o.Path
	}
	return filepath.Join(o.root(), std)
}

func (o Options) root() string {
	if o.Root == "" {
		return "/"
	}
	return o.Root
}

// upstream is the URL containerd uses for a registry when no host answers.
func upstream(registry string) string {
	if registry == "docker.io" {
		return "https://registry-1.docker.io"
	}
	return "https://" + registry
}

// File is a configuration file a target installs.
type File struct {
	Path string
	// Merge returns the new content given the current one (nil when the
	// file does not exist). Merge(Merge(x)) must equal Merge(x).
	Merge func(existing []byte) ([]byte, error)
}

// Snippet is a block of text for the user to paste somewhere (CI configs).
type Snippet struct {
	Title string
	Lang  string
	Body  string
}

// Plan is what a target generates.
type Plan struct {
	Files    []File
	Snippets []Snippet
	// Notes are printed after the files: restart commands, hints.
	Notes []string
}

// Target is one "regcache setup <name>".
type Target struct {
	Name  string
	Short string
	// Writable targets install files with --write; the others only print.
	Writable bool
	Build    func(Options) (Plan, error)
}

// Targets lists every target, sorted by name.
func Targets() []Target {
	ts := []Target{
		dockerTarget(), containerdTarget(), buildkitTarget(), podmanTarget(), k3sTarget(), kindTarget(),
		codebuildTarget(), circleciTarget(), githubTarget(), gitlabTarget(),
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
	return ts
}

// Lookup finds a target by name.
func Lookup(name string) (Target, bool) {
	for _, t := range Targets() {
		if t.Name == name {
			return t, true
		}
	}
	return Target{}, false
}

// Render prints a plan: each file as it would be written on a machine
// without one, then the snippets and notes.
func Render(w io.Writer, p Plan) error {
	for _, f := range p.Files {
		data, err := f.Merge(nil)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "# ==> %s\n%s\n", f.Path, data)
	}
	for _, s := range p.Snippets {
		fmt.Fprintf(w, "# ==> %s\n%s\n", s.Title, strings.TrimRight(s.Body, "\n")+"\n")
	}
	for _, n := range p.Notes {
		fmt.Fprintf(w, "# %s\n", strings.ReplaceAll(strings.TrimRight(n, "\n"), "\n", "\n# "))
	}
	return nil
}

// Action is what Install did with one file.
type Action struct {
	Path   string
	Backup string // "" when there was nothing to back up
	// Changed is false when the file already had the right content.
	Changed bool
}

// Install merges each file of the plan into the file on disk. A changed
// file is first copied to <path>.bak and then replaced atomically; an
// unchanged file is not touched at all, so running it twice leaves the same
// bytes (and the same backup). Nothing is written when any merge fails.
func Install(p Plan) ([]Action, error) {
	type pending struct {
		path    string
		old     []byte
		existed bool
		mode    os.FileMode
		new     []byte
	}
	var todo []pending
	for _, f := range p.Files {
		old, err := os.ReadFile(f.Path)
		existed := err == nil
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		var mode os.FileMode
		if info, err := os.Stat(f.Path); err == nil {
			mode = info.Mode().Perm()
		}
		data, err := f.Merge(old)
		if err != nil {
			return nil, fmt.Errorf("%s: %w (file not modified)", f.Path, err)
		}
		todo = append(todo, pending{f.Path, old, existed, mode, data})
	}
	var acts []Action
	for _, t := range todo {
		a := Action{Path: t.path}
		if t.existed && string(t.old) == string(t.new) {
			acts = append(acts, a)
			continue
		}
		a.Changed = true
		if err := os.MkdirAll(filepath.Dir(t.path), 0o755); err != nil {
			return acts, err
		}
		if t.existed {
			a.Backup = t.path + ".bak"
			// The backup may hold secrets (registry credentials): same mode.
			if err := rewrite.WriteAtomicMode(a.Backup, t.old, t.mode); err != nil {
				return acts, err
			}
		}
		if err := rewrite.WriteAtomic(t.path, t.new); err != nil {
			return acts, err
		}
		acts = append(acts, a)
	}
	return acts, nil
}

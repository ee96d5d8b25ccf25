package setup

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
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
	// Username is the login that hosts and CI jobs use when regcache has
	// client_auth; empty for a cache without logins.
	Username string
	// PasswordEnv names the environment variable (or CI secret) that
	// holds Username's password when a job runs. setup never sees the
	// password itself, so no output can leak it. Default REGCACHE_PASSWORD.
	PasswordEnv string
	// HostsTOML makes the docker target write Docker Engine 29's
	// /etc/docker/certs.d/<registry>/hosts.toml instead of daemon.json.
	HostsTOML bool
	// BuildxDir, when set, makes the buildkit target install buildx's
	// default configuration, <BuildxDir>/buildkitd.default.toml.
	BuildxDir string
}

// DefaultPasswordEnv is the variable a job reads the regcache password from.
const DefaultPasswordEnv = "REGCACHE_PASSWORD"

// login is how a job logs in to regcache; the zero value means no login.
type login struct {
	user string
	env  string // name of the variable that holds the password
}

func (o Options) login() (login, error) {
	if o.Username == "" {
		if o.PasswordEnv != "" {
			return login{}, errors.New("--password-env without --username: give the login that the password belongs to")
		}
		return login{}, nil
	}
	if strings.ContainsAny(o.Username, ":\"' \t\n$`") {
		return login{}, fmt.Errorf("--username %q: a login name has no spaces, quotes, colons or $", o.Username)
	}
	env := o.PasswordEnv
	if env == "" {
		env = DefaultPasswordEnv
	}
	if !envName.MatchString(env) {
		return login{}, fmt.Errorf("--password-env %q: want a variable name such as %s", env, DefaultPasswordEnv)
	}
	return login{o.Username, env}, nil
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// BuildxConfigDir is where buildx looks for buildkitd.default.toml:
// $BUILDX_CONFIG, else $DOCKER_CONFIG/buildx, else ~/.docker/buildx.
func BuildxConfigDir(getenv func(string) string) string {
	if d := getenv("BUILDX_CONFIG"); d != "" {
		return d
	}
	if d := getenv("DOCKER_CONFIG"); d != "" {
		return filepath.Join(d, "buildx")
	}
	return filepath.Join(getenv("HOME"), ".docker", "buildx")
}

// server is the parsed Server option.
type server struct {
	scheme string // http or https
	host   string // host[:port]
	// insecure: clients must allow http or skip TLS verification.
	insecure bool
	// caPEM is the CA certificate clients should trust (--ca-file), ca the
	// path a client's configuration names once installCA has put it there.
	ca    string
	caPEM []byte
	// login is the client_auth login, if regcache has one.
	login login
}

func (s server) url() string { return s.scheme + "://" + s.host }

// hostname is host without the port.
func (s server) hostname() string {
	if h, _, err := net.SplitHostPort(s.host); err == nil {
		return strings.Trim(h, "[]")
	}
	return strings.Trim(s.host, "[]")
}

// loopbackWarning is a note for outputs used where the server address
// would reach the wrong machine (who): a loopback address there is who
// itself.
func loopbackWarning(s server, who string) []string {
	if !s.loopback() {
		return nil
	}
	return []string{fmt.Sprintf("WARNING: %s is a loopback address: for %s it is %s itself, not the machine running regcache, so pulls would fail there and fall back to the registry. Give --server the DNS name or IP address that %s reaches regcache at.", s.host, who, who, who)}
}

// loopback reports whether the address only reaches the machine it is
// used on: a job container, a dind service or a remote engine that is
// given it reaches itself, not regcache.
func (s server) loopback() bool {
	h := s.hostname()
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

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
	if s.login, err = o.login(); err != nil {
		return server{}, err
	}
	if o.CAFile != "" {
		if s.scheme != "https" {
			return server{}, fmt.Errorf("--ca-file: the server %s is plain http; a CA is only for https", s.url())
		}
		if o.Insecure {
			return server{}, errors.New("--ca-file and --insecure: give one, not both (with the CA, clients can verify the server)")
		}
		if s.caPEM, err = readCA(o.CAFile); err != nil {
			return server{}, fmt.Errorf("--ca-file %s: %w", o.CAFile, err)
		}
	}
	return s, nil
}

// readCA reads a PEM file that must hold at least one certificate and
// nothing else.
func readCA(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	rest, n := data, 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("holds a %s block; want only certificates (never a private key)", b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM certificate in it")
	}
	return data, nil
}

// filePlan is the plan of a target that edits one file, at std (or
// --path), with merge for the server the options name. With --ca-file the
// CA is installed at caPath(s) (see installCA) and the merge names it there.
func (o Options) filePlan(std string, caPath func(server) string, merge func(existing []byte, s server) ([]byte, error)) (Plan, server, error) {
	s, err := o.server()
	if err != nil {
		return Plan{}, s, err
	}
	var ca Plan
	s = o.installCA(&ca, s, caPath(s))
	p := Plan{Files: append([]File{{
		Path:  o.path(std),
		Merge: func(b []byte) ([]byte, error) { return merge(b, s) },
	}}, ca.Files...)}
	return p, s, nil
}

// installCA adds a copy of regcache's CA to p and returns the server with
// ca set to the path the client's configuration must name. A relative p
// is a standard path: installed under --root, named as /p (the path when
// the client runs). An absolute p is used as it is. Clients never depend
// on where the CA was when setup ran. Without --ca-file nothing changes.
func (o Options) installCA(p *Plan, s server, path string) server {
	if s.caPEM == nil {
		return s
	}
	install, named := path, path
	if !filepath.IsAbs(path) {
		install, named = filepath.Join(o.root(), path), "/"+filepath.ToSlash(path)
	}
	pem := s.caPEM
	p.Files = append(p.Files, File{Path: install, Merge: func([]byte) ([]byte, error) { return pem, nil }})
	s.ca = named
	return s
}

// certsDCA is where docker, podman and containerd look for a registry's
// CA without being told: <certs.d>/<host:port>/*.crt.
func certsDCA(certsD string, s server) string {
	return filepath.Join(certsD, s.host, "regcache-ca.crt")
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

// Package config loads, defaults and validates regcache's YAML configuration.
//
// Every error names the key (as a dotted path) or the file it came from, and
// never includes a secret's value.
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

//go:embed default.yaml
var defaultYAML []byte

// Config is the whole configuration of one regcache server.
type Config struct {
	Listen          string   `yaml:"listen"`
	Storage         Storage  `yaml:"storage"`
	TagTTL          Duration `yaml:"tag_ttl"`
	TagsListTTL     Duration `yaml:"tags_list_ttl"`
	UpstreamTimeout Duration `yaml:"upstream_timeout"`
	// UpstreamConnectTimeout bounds a dial and TLS handshake to an
	// upstream; UpstreamHeaderTimeout the wait for response headers.
	UpstreamConnectTimeout Duration `yaml:"upstream_connect_timeout"`
	UpstreamHeaderTimeout  Duration `yaml:"upstream_header_timeout"`
	// RevalidateWait is the longest a pull of a cached tag past tag_ttl
	// waits for the origin; then the cached answer is served, marked
	// stale, and the revalidation finishes in the background.
	RevalidateWait Duration `yaml:"revalidate_wait"`
	// StaleWhileRevalidate serves a cached tag past tag_ttl at once and
	// always revalidates in the background.
	StaleWhileRevalidate bool `yaml:"stale_while_revalidate"`
	// MaxStale bounds how long past tag_ttl a cached tag may be served
	// without the origin's word; 0 is no bound.
	MaxStale Duration `yaml:"max_stale"`
	// HedgeDelay is how long a tag nothing is cached for waits for the
	// origin before the mirrors are asked too (tag_fallback: mirrors).
	HedgeDelay      Duration `yaml:"hedge_delay"`
	DefaultRegistry string   `yaml:"default_registry"`
	// TagFallback says whether a tag the origin cannot resolve (429, 5xx,
	// unreachable) and that is not cached may be resolved at a mirror:
	// "mirrors" (default) or "never".
	TagFallback string `yaml:"tag_fallback"`
	LogLevel    string `yaml:"log_level"`
	// LogFormat is "text" (logfmt-style key=value lines) or "json" (one
	// object per line, for log pipelines such as CloudWatch or Loki).
	LogFormat string `yaml:"log_format"`
	// BlobCopy says how cached blobs are sent: "buffered" (1 MiB copies) or
	// "sendfile" (the kernel's zero-copy path).
	BlobCopy string `yaml:"blob_copy"`
	// TagIndexEntries bounds the in-memory index of tag answers.
	TagIndexEntries int `yaml:"tag_index_entries"`
	// ListCacheSize bounds the memory tags lists and referrers answers
	// take.
	ListCacheSize ByteSize `yaml:"list_cache_size"`
	// SendTimeout is the longest a client may take to accept the next
	// piece of a response before it is cut off (nginx's send_timeout).
	SendTimeout Duration `yaml:"send_timeout"`
	// MaxConnections bounds the client connections served at once; more
	// wait in the listen backlog.
	MaxConnections int `yaml:"max_connections"`
	// HTTP2MaxStreams bounds the concurrent streams of one HTTP/2
	// connection.
	HTTP2MaxStreams int `yaml:"http2_max_streams"`
	// MaxBlobSize caps a download whose size no manifest or Content-Length
	// states.
	MaxBlobSize ByteSize `yaml:"max_blob_size"`
	// MinTransferRate is the slowest upstream blob transfer tolerated, in
	// bytes per second averaged over 30 s.
	MinTransferRate ByteSize `yaml:"min_transfer_rate"`
	// ShutdownGrace bounds a shutdown: requests in progress finish, then
	// downloads are committed, within it.
	ShutdownGrace Duration `yaml:"shutdown_grace"`
	// MaxRetryAfter is the longest pause an upstream's Retry-After can
	// impose on regcache.
	MaxRetryAfter Duration            `yaml:"max_retry_after"`
	Registries    map[string]Registry `yaml:"registries"`
	// ClientAuth, when set, makes clients authenticate to regcache itself.
	ClientAuth *ClientAuth `yaml:"client_auth"`
	// TLS, when set, makes regcache serve HTTPS on listen.
	TLS *TLS `yaml:"tls"`
	// Cluster, when set, makes this regcache one of several replicas on a
	// shared store, coordinating through Redis.
	Cluster *Cluster `yaml:"cluster"`
}

// Cluster configures one replica of several that share one object store.
type Cluster struct {
	// Redis is the coordinator: host:port or a redis:// URL.
	Redis string `yaml:"redis"`
	// Username and the password's source for Redis ACLs, if any.
	Username     string `yaml:"username"`
	PasswordEnv  string `yaml:"password_env"`
	PasswordFile string `yaml:"password_file"`
	// Advertise is the URL the other replicas reach this one at; or
	// AdvertiseEnv names the environment variable that holds it (a pod's
	// address).
	Advertise    string `yaml:"advertise"`
	AdvertiseEnv string `yaml:"advertise_env"`
	// SecretFile holds a secret (at least 32 bytes) shared by every
	// replica, which authenticates their requests to each other.
	SecretFile string `yaml:"secret_file"`
	// Prefix is prepended to every Redis key (default "regcache:").
	Prefix string `yaml:"prefix"`
}

// ClientAuth says who may pull through regcache. Without it anyone who can
// reach the listen address can pull everything regcache's upstream
// credentials can read.
type ClientAuth struct {
	// Htpasswd is a file of user:bcrypt-hash lines (htpasswd -B).
	Htpasswd string `yaml:"htpasswd"`
	// TokenKeyFile holds a secret (at least 32 bytes) that signs the
	// tokens, so that replicas behind one load balancer accept each
	// other's; without it each process signs with a random key of its own.
	TokenKeyFile string `yaml:"token_key_file"`
	// AnonymousRegistries may be pulled from without credentials, such as
	// docker.io for dockerd's registry-mirrors, which cannot be given a
	// mirror's own login. Credentials sent for them are not checked:
	// dockerd forwards the user's Docker Hub login to the mirror.
	AnonymousRegistries []string `yaml:"anonymous_registries"`
	// Metrics is "open" (the default: Prometheus scrapes without a login)
	// or "login" (/metrics needs a user from the htpasswd file, as
	// /_regcache/ always does with client_auth).
	Metrics string `yaml:"metrics"`
}

// TLS names the PEM files regcache serves HTTPS with.
type TLS struct {
	Certificate string `yaml:"certificate"` // chain, leaf first
	Key         string `yaml:"key"`
}

// Storage selects where cached content lives.
type Storage struct {
	Root string `yaml:"root"`
	// MaxSize bounds the blob store; above it the least recently used
	// content is evicted (down to 90%). 0 means unbounded.
	MaxSize ByteSize `yaml:"max_size"`
	// GCInterval is how often the size is checked when MaxSize is set.
	GCInterval Duration `yaml:"gc_interval"`
	// S3, when set, keeps content in an S3 bucket instead of under Root.
	S3 *S3 `yaml:"s3"`
}

// S3 is an S3 bucket (AWS, or an S3-compatible server at Endpoint) that
// holds the cache. Credentials are not configured here: they come from the
// AWS SDK's default chain (environment, shared files, web identity, ECS or
// EC2 role), so they never sit in regcache's config.
type S3 struct {
	Bucket string `yaml:"bucket"`
	// Region may be left to AWS_REGION or the shared config; with an
	// Endpoint it defaults to us-east-1.
	Region string `yaml:"region"`
	// Endpoint is an S3-compatible server's URL; empty means AWS.
	Endpoint string `yaml:"endpoint"`
	// PathStyle addresses endpoint/bucket/key instead of
	// bucket.endpoint/key.
	PathStyle bool `yaml:"path_style"`
	// Prefix puts every object under this key prefix, so one bucket can
	// hold several caches.
	Prefix string `yaml:"prefix"`
	// Redirect answers cached blob GETs with a 307 to a presigned URL
	// valid for RedirectExpiry, so the bytes do not pass through regcache.
	Redirect       bool     `yaml:"redirect"`
	RedirectExpiry Duration `yaml:"redirect_expiry"`
}

// defaultRedirectExpiry is how long a presigned blob URL is valid when
// storage.s3.redirect_expiry is not set (Distribution's default too).
const defaultRedirectExpiry = 20 * time.Minute

// ByteSize is a size such as 500MiB, 50GB or 1073741824.
type ByteSize int64

// UnmarshalYAML parses a size with an optional unit (B, KB, MB, GB, TB and
// the binary KiB, MiB, GiB, TiB).
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a size such as 50GiB", n.Line)
	}
	v, err := ParseByteSize(s)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*b = ByteSize(v)
	return nil
}

// ParseByteSize parses "50GiB", "500 MB", "1024".
func ParseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%q is not a size (use forms like 500MiB, 50GB)", s)
	}
	mult := map[string]float64{"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
		"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
	m, ok := mult[unit]
	if !ok {
		return 0, fmt.Errorf("%q has an unknown unit %q (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)", s, unit)
	}
	return int64(f * m), nil
}

// Registry is one upstream registry that regcache is allowed to contact.
type Registry struct {
	URL     string   `yaml:"url"`
	Auth    *Auth    `yaml:"auth"`
	Mirrors []Mirror `yaml:"mirrors"`
	// Aliases are other names clients use for the same registry, such as
	// index.docker.io for docker.io.
	Aliases []string `yaml:"aliases"`
	// Reserve is the number of counted pulls kept for true misses: below
	// it, cached tags are served past tag_ttl rather than spending a pull.
	Reserve int `yaml:"reserve"`
	// AllowPrivateRedirects lets this registry's redirects and token
	// realms send regcache to loopback, private and link-local addresses.
	// Unset: allowed only when the registry's own URL is at such an address.
	AllowPrivateRedirects *bool `yaml:"allow_private_redirects"`
}

// Mirror is an alternative source for a registry's content.
type Mirror struct {
	URL          string   `yaml:"url"`
	RepoPrefix   string   `yaml:"repo_prefix"`
	Repositories []string `yaml:"repositories"`
	Auth         *Auth    `yaml:"auth"`
}

// Auth says where the credentials for a registry come from. Exactly one source
// of password may be set; DockerConfig is an alternative to all of them.
type Auth struct {
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordEnv  string `yaml:"password_env"`
	PasswordFile string `yaml:"password_file"`
	// DockerConfig is a docker config.json (or the directory holding it);
	// credential helpers named in it are used.
	DockerConfig string `yaml:"docker_config"`
}

// Duration is a time.Duration that reads "5m" style strings from YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as 5m or 30s", n.Line)
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (use forms like 30s, 5m, 1h)", n.Line, s)
	}
	if v < 0 {
		return fmt.Errorf("line %d: duration %q is negative", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Default returns the embedded default configuration.
func Default() *Config {
	c, err := parse(defaultYAML, "embedded defaults")
	if err != nil {
		panic("regcache: embedded default config is invalid: " + err.Error())
	}
	return c
}

// Load reads path, or the embedded defaults when path is empty.
func Load(path string) (*Config, error) {
	if path == "" {
		return Default(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	return parse(data, path)
}

// Parse parses a YAML document; source names it in errors.
func Parse(data []byte, source string) (*Config, error) { return parse(data, source) }

func parse(data []byte, source string) (*Config, error) {
	c := &Config{}
	if err := yaml.Unmarshal(defaultYAML, c); err != nil {
		return nil, fmt.Errorf("embedded defaults: %w", err)
	}
	// A file that names registries replaces the default set: an operator who
	// lists registries means "only these", which is what keeps regcache from
	// being an open proxy.
	c.Registries = nil
	// default_registry defaults to docker.io only when docker.io is
	// configured; a file that caches just ghcr.io should not fail on it.
	c.DefaultRegistry = ""
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config file %s: %s", source, friendlyYAMLError(err))
	}
	if c.Registries == nil {
		c.Registries = defaultRegistries()
	}
	if _, ok := c.Registries["docker.io"]; ok && c.DefaultRegistry == "" {
		c.DefaultRegistry = "docker.io"
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("config file %s: %w", source, err)
	}
	return c, nil
}

// friendlyYAMLError turns yaml.v3's "field x not found in type config.Config"
// into a message that names the key the operator wrote, and keeps the value
// out of its "cannot unmarshal !!str `value` into T": a value in the wrong
// place may be a password (a misindented `auth: s3cr3t`, or one written
// without the space after its key), and yaml.v3 quotes up to ten
// characters of it. The line, the YAML type and the type expected are
// enough to find the mistake.
func friendlyYAMLError(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "yaml: unmarshal errors:\n")
	var out []string
	for _, line := range strings.Split(msg, "\n") {
		line = strings.TrimSpace(line)
		if i := strings.Index(line, "field "); i >= 0 && strings.Contains(line, " not found in type ") {
			key := strings.TrimPrefix(line[i:], "field ")
			key = key[:strings.Index(key, " not found")]
			if k, _, ok := strings.Cut(key, ":"); ok {
				// A key and its value run together, `password:s3cr3t`:
				// name the key, never the value.
				key = k + ": (no space after the colon, so the key and its value ran together; value not shown)"
			}
			line = strings.TrimSpace(line[:i]) + " unknown key " + key
		}
		line = quotedValue.ReplaceAllString(line, "cannot unmarshal $1 (value not shown) into ")
		out = append(out, line)
	}
	return strings.Join(out, "; ")
}

// quotedValue is the value yaml.v3 quotes in a type error, up to the last
// "` into " of the line, since the value may itself hold a backquote.
var quotedValue = regexp.MustCompile("cannot unmarshal (!!\\S+) `.*` into ")

// defaultRegistries returns the registries of the embedded defaults.
func defaultRegistries() map[string]Registry {
	c := &Config{}
	if err := yaml.Unmarshal(defaultYAML, c); err != nil {
		panic(err)
	}
	return c.Registries
}

func (c *Config) validate() error {
	if c.Listen == "" {
		return errors.New("listen: must not be empty")
	}
	if c.Storage.Root == "" {
		return errors.New("storage.root: must not be empty")
	}
	if err := c.Storage.S3.validate(); err != nil {
		return err
	}
	if len(c.Registries) == 0 {
		return errors.New("registries: at least one registry is required")
	}
	switch c.BlobCopy {
	case "buffered", "sendfile":
	default:
		return fmt.Errorf("blob_copy: %q is not one of buffered, sendfile", c.BlobCopy)
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{{"send_timeout", c.SendTimeout}, {"max_retry_after", c.MaxRetryAfter}, {"shutdown_grace", c.ShutdownGrace},
		{"upstream_connect_timeout", c.UpstreamConnectTimeout}, {"upstream_header_timeout", c.UpstreamHeaderTimeout}} {
		if d.v.D() < time.Second {
			return fmt.Errorf("%s: %s is too short (at least 1s)", d.key, d.v.D())
		}
	}
	if c.UpstreamTimeout.D() <= 0 {
		return errors.New("upstream_timeout: must be positive")
	}
	for _, n := range []struct {
		key      string
		v, least int64
	}{
		{"max_connections", int64(c.MaxConnections), 16}, {"http2_max_streams", int64(c.HTTP2MaxStreams), 1},
		{"max_blob_size", int64(c.MaxBlobSize), 1 << 20}, {"min_transfer_rate", int64(c.MinTransferRate), 1},
		{"list_cache_size", int64(c.ListCacheSize), 1 << 20},
	} {
		if n.v < n.least {
			return fmt.Errorf("%s: %d is too small (at least %d)", n.key, n.v, n.least)
		}
	}
	if c.TagIndexEntries < 1000 {
		return fmt.Errorf("tag_index_entries: %d is too small (at least 1000)", c.TagIndexEntries)
	}
	switch c.TagFallback {
	case "mirrors", "never":
	default:
		return fmt.Errorf("tag_fallback: %q is not one of mirrors, never", c.TagFallback)
	}
	switch strings.ToLower(c.LogLevel) {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level: %q is not one of debug, info, warn, error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("log_format: %q is not one of text, json", c.LogFormat)
	}
	names := make([]string, 0, len(c.Registries))
	for name := range c.Registries {
		names = append(names, name)
	}
	sort.Strings(names)
	seen := map[string]string{}
	for _, name := range names {
		r := c.Registries[name]
		key := "registries." + name
		if name != strings.ToLower(name) || strings.ContainsAny(name, "/ ") {
			return fmt.Errorf("%s: a registry name is a lower-case host such as ghcr.io", key)
		}
		if err := checkURL(key+".url", r.URL); err != nil {
			return err
		}
		if err := r.Auth.validate(key + ".auth"); err != nil {
			return err
		}
		if r.Reserve < 0 {
			return fmt.Errorf("%s.reserve: must not be negative", key)
		}
		for i, m := range r.Mirrors {
			mk := fmt.Sprintf("%s.mirrors[%d]", key, i)
			if err := checkURL(mk+".url", m.URL); err != nil {
				return err
			}
			if err := m.Auth.validate(mk + ".auth"); err != nil {
				return err
			}
			for _, p := range m.Repositories {
				if p == "" {
					return fmt.Errorf("%s.repositories: empty pattern", mk)
				}
			}
		}
		for _, a := range append([]string{name}, r.Aliases...) {
			if prev, ok := seen[a]; ok {
				return fmt.Errorf("%s.aliases: %s is already used by registries.%s", key, a, prev)
			}
			seen[a] = name
		}
	}
	if c.DefaultRegistry != "" {
		if _, ok := c.Registries[c.DefaultRegistry]; !ok {
			return fmt.Errorf("default_registry: %q is not one of the configured registries", c.DefaultRegistry)
		}
	}
	if a := c.ClientAuth; a != nil {
		if a.Htpasswd == "" {
			return errors.New("client_auth.htpasswd: must name an htpasswd file of bcrypt hashes (htpasswd -B)")
		}
		for _, name := range a.AnonymousRegistries {
			if _, ok := c.Registries[name]; !ok {
				return fmt.Errorf("client_auth.anonymous_registries: %q is not one of the configured registries", name)
			}
		}
		switch a.Metrics {
		case "", "open", "login":
		default:
			return fmt.Errorf("client_auth.metrics: %q is not one of open, login", a.Metrics)
		}
	}
	if cl := c.Cluster; cl != nil {
		if err := cl.validate(); err != nil {
			return err
		}
	}
	if t := c.TLS; t != nil {
		if t.Certificate == "" {
			return errors.New("tls.certificate: must name a PEM certificate file")
		}
		if t.Key == "" {
			return errors.New("tls.key: must name a PEM private key file")
		}
	}
	return nil
}

// validate checks storage.s3 and fills in its defaults.
func (s *S3) validate() error {
	if s == nil {
		return nil
	}
	if err := checkBucketName(s.Bucket); err != nil {
		return fmt.Errorf("storage.s3.bucket: %w", err)
	}
	if s.Endpoint != "" {
		if err := checkURL("storage.s3.endpoint", s.Endpoint); err != nil {
			return err
		}
	}
	if p := strings.Trim(s.Prefix, "/"); p != "" {
		for _, seg := range strings.Split(p, "/") {
			if seg == "" || seg == "." || seg == ".." {
				return fmt.Errorf("storage.s3.prefix: %q must be plain segments separated by single slashes", s.Prefix)
			}
		}
	}
	if s.RedirectExpiry == 0 {
		s.RedirectExpiry = Duration(defaultRedirectExpiry)
	}
	// SigV4 signatures are checked in whole seconds and last 7 days at most.
	if d := s.RedirectExpiry.D(); d < time.Second || d > 7*24*time.Hour {
		return fmt.Errorf("storage.s3.redirect_expiry: %s is not between 1s and 168h", d)
	}
	return nil
}

// checkBucketName applies S3's naming rules, so a typo is reported at
// start-up rather than as a signature or DNS error on the first pull.
func checkBucketName(b string) error {
	if b == "" {
		return errors.New("must be set")
	}
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("%q must be 3 to 63 characters long", b)
	}
	for i, r := range b {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || (r == '-' || r == '.') && i > 0 && i < len(b)-1
		if !ok {
			return fmt.Errorf("%q may hold only lower-case letters, digits, and inner dots and hyphens", b)
		}
	}
	return nil
}

func (cl *Cluster) validate() error {
	if cl.Redis == "" {
		return errors.New("cluster.redis: must name the Redis coordinator (host:port or redis://...)")
	}
	if strings.Contains(cl.Redis, "@") {
		return errors.New("cluster.redis: credentials in the address are not allowed; use cluster.password_env or password_file")
	}
	if (cl.Advertise == "") == (cl.AdvertiseEnv == "") {
		return errors.New("cluster.advertise: set exactly one of advertise (the URL the other replicas reach this one at) and advertise_env")
	}
	if cl.Advertise != "" {
		if err := checkURL("cluster.advertise", cl.Advertise); err != nil {
			return err
		}
	}
	if cl.SecretFile == "" {
		return errors.New("cluster.secret_file: must name a file holding a secret of at least 32 bytes, the same on every replica")
	}
	if cl.PasswordEnv != "" && cl.PasswordFile != "" {
		return errors.New("cluster: set only one of password_env, password_file")
	}
	return nil
}

// Resolve reads the cluster's secrets and address from their sources.
// Errors name the key or file, never a value.
func (cl *Cluster) Resolve() (advertise, password string, secret []byte, err error) {
	advertise = cl.Advertise
	if cl.AdvertiseEnv != "" {
		advertise = os.Getenv(cl.AdvertiseEnv)
		if err := checkURL("cluster.advertise_env ($"+cl.AdvertiseEnv+")", advertise); err != nil {
			return "", "", nil, err
		}
	}
	switch {
	case cl.PasswordEnv != "":
		password = os.Getenv(cl.PasswordEnv)
		if password == "" {
			return "", "", nil, fmt.Errorf("cluster.password_env: environment variable %s is not set or empty", cl.PasswordEnv)
		}
	case cl.PasswordFile != "":
		b, err := os.ReadFile(cl.PasswordFile)
		if err != nil {
			return "", "", nil, fmt.Errorf("cluster.password_file: cannot read %s: %v", cl.PasswordFile, errors.Unwrap(err))
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	secret, err = os.ReadFile(cl.SecretFile)
	if err != nil {
		return "", "", nil, fmt.Errorf("cluster.secret_file: cannot read %s: %v", cl.SecretFile, errors.Unwrap(err))
	}
	secret = bytes.TrimSpace(secret)
	if len(secret) < 32 {
		return "", "", nil, fmt.Errorf("cluster.secret_file %s: the secret is %d bytes; at least 32 are needed", cl.SecretFile, len(secret))
	}
	return advertise, password, secret, nil
}

func checkURL(key, raw string) error {
	if raw == "" {
		return fmt.Errorf("%s: must be set (for example https://registry-1.docker.io)", key)
	}
	u, err := url.Parse(raw)
	if err != nil {
		// Do not echo raw: a URL that does not parse may still hold a
		// password.
		return fmt.Errorf("%s: not a URL", key)
	}
	if u.User != nil {
		return fmt.Errorf("%s: credentials in the URL are not allowed; use the auth key", key)
	}
	if u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return fmt.Errorf("%s: %q is not an http:// or https:// URL", key, raw)
	}
	if u.Path != "" && u.Path != "/" {
		return fmt.Errorf("%s: %q must not have a path", key, raw)
	}
	return nil
}

func (a *Auth) validate(key string) error {
	if a == nil {
		return nil
	}
	n := 0
	for _, s := range []string{a.Password, a.PasswordEnv, a.PasswordFile} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return fmt.Errorf("%s: set only one of password, password_env, password_file", key)
	}
	if a.DockerConfig != "" && (n > 0 || a.Username != "") {
		return fmt.Errorf("%s: docker_config cannot be combined with username/password", key)
	}
	if a.DockerConfig == "" && a.Username == "" {
		return fmt.Errorf("%s.username: must be set (or use docker_config)", key)
	}
	if a.DockerConfig == "" && n == 0 {
		return fmt.Errorf("%s: one of password, password_env, password_file is required", key)
	}
	return nil
}

// Secret resolves the password from its source. Errors name the key or file
// and never the value.
func (a *Auth) Secret(key string) (string, error) {
	switch {
	case a.Password != "":
		return a.Password, nil
	case a.PasswordEnv != "":
		v, ok := os.LookupEnv(a.PasswordEnv)
		if !ok || v == "" {
			return "", fmt.Errorf("%s.password_env: environment variable %s is not set or empty", key, a.PasswordEnv)
		}
		return v, nil
	case a.PasswordFile != "":
		b, err := os.ReadFile(a.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("%s.password_file: cannot read %s: %v", key, a.PasswordFile, errors.Unwrap(err))
		}
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return "", fmt.Errorf("%s.password_file: %s is empty", key, a.PasswordFile)
		}
		return v, nil
	}
	return "", fmt.Errorf("%s: no password source", key)
}

// Changed lists the top-level keys whose values differ between a and b,
// except those named in ignore, for saying what a reload did not apply.
func Changed(a, b *Config, ignore ...string) []string {
	am, bm := topLevel(a), topLevel(b)
	var out []string
	for k, v := range bm {
		if !slices.Contains(ignore, k) && !reflect.DeepEqual(am[k], v) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func topLevel(c *Config) map[string]any {
	var m map[string]any
	b, _ := yaml.Marshal(c)
	_ = yaml.Unmarshal(b, &m)
	return m
}

// Lookup finds a registry by its name or one of its aliases.
func (c *Config) Lookup(host string) (string, bool) {
	host = strings.ToLower(host)
	if _, ok := c.Registries[host]; ok {
		return host, true
	}
	for name, r := range c.Registries {
		for _, a := range r.Aliases {
			if a == host {
				return name, true
			}
		}
	}
	return "", false
}

// Package app wires regcache together from its configuration: store,
// upstream clients, cache and HTTP server. The serve command and the
// full-stack tests build the server the same way, through New.
package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/regcache/regcache/internal/clientauth"
	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/credentials"
	"github.com/regcache/regcache/internal/metrics"
	"github.com/regcache/regcache/internal/pull"
	"github.com/regcache/regcache/internal/server"
	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/upstream"
)

// App is a ready-to-serve regcache.
type App struct {
	Handler   http.Handler
	Metrics   *metrics.Metrics
	Cache     *pull.Cache
	Store     *store.FS
	Upstreams map[string]*upstream.Registry
	// TLS is set when the config has tls: serve HTTPS with it.
	TLS *tls.Config
	// certs serves the tls files, nil without tls.
	certs *certReloader
	// users is the client_auth.htpasswd file, nil without client_auth.
	users *clientauth.File
	// usersEvery overrides usersReloadEvery (tests).
	usersEvery time.Duration
	// identities names who each registry's budget is counted for.
	identities map[string]string
	cfg        *config.Config
	log        *slog.Logger
}

// usersReloadEvery is how often the htpasswd file is checked for changes.
const usersReloadEvery = 10 * time.Second

// Run does the server's background work until ctx ends: keeping the store
// under storage.max_size, and reading client_auth.htpasswd again when it
// changes.
func (a *App) Run(ctx context.Context) {
	var wg sync.WaitGroup
	if a.users != nil {
		wg.Go(func() { a.watchUsers(ctx) })
	}
	if max := int64(a.cfg.Storage.MaxSize); max > 0 {
		wg.Go(func() { a.gcLoop(ctx, max) })
	}
	wg.Wait()
}

// watchUsers reloads the htpasswd file when it changes. A file that does
// not parse keeps the previous users; the error is logged once, not on
// every check.
func (a *App) watchUsers(ctx context.Context) {
	every := a.usersEvery
	if every <= 0 {
		every = usersReloadEvery
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var lastErr string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := a.users.Reload()
		switch {
		case err != nil:
			if err.Error() != lastErr {
				a.log.Error("client_auth.htpasswd not reloaded; the previous users stay in force", "err", err)
			}
			lastErr = err.Error()
		case changed:
			lastErr = ""
			a.log.Info("client_auth.htpasswd reloaded", "users", a.users.Users())
		}
	}
}

func (a *App) gcLoop(ctx context.Context, max int64) {
	every := a.cfg.Storage.GCInterval.D()
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		a.collect(ctx, max)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *App) collect(ctx context.Context, max int64) {
	st, err := a.Store.Collect(ctx, max, max/10*9, time.Now())
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("storage collection failed", "err", err)
		}
		return
	}
	a.Metrics.StoreBytes.Set(float64(st.Bytes - st.EvictedBytes))
	if st.Evicted > 0 {
		a.Metrics.EvictedBytes.Add(float64(st.EvictedBytes))
		a.log.Info("evicted least recently used content", "blobs", st.Evicted, "bytes", st.EvictedBytes,
			"before", st.Bytes, "max_size", max)
	}
}

// New builds an App. It makes no network connection: regcache must start,
// and serve its cache, with every upstream down.
func New(cfg *config.Config, log *slog.Logger) (*App, error) {
	st, err := store.OpenFS(cfg.Storage.Root)
	if err != nil {
		return nil, err
	}
	return build(cfg, log, st)
}

// Check builds everything New builds from cfg (upstream credentials, which
// reads password_env variables and password files, client logins, the token
// key, the TLS pair) and checks that storage.root is a writable directory
// or can be made one, for `regcache serve --check-config`. It does not open
// the store: opening removes partial downloads, which may belong to a
// server already running on the same directory.
func Check(cfg *config.Config, log *slog.Logger) error {
	if err := checkStorageRoot(cfg.Storage.Root); err != nil {
		return err
	}
	_, err := build(cfg, log, nil)
	return err
}

// checkStorageRoot reports whether root, or the nearest directory above it
// that exists, accepts a new file.
func checkStorageRoot(root string) error {
	dir, err := filepath.Abs(root)
	if err != nil {
		return fmt.Errorf("storage.root %s: %w", root, err)
	}
	for {
		fi, err := os.Stat(dir)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("storage.root %s: %s is not a directory", root, dir)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || filepath.Dir(dir) == dir {
			return fmt.Errorf("storage.root %s: %w", root, err)
		}
		dir = filepath.Dir(dir)
	}
	f, err := os.CreateTemp(dir, ".regcache-check-*")
	if err != nil {
		return fmt.Errorf("storage.root %s: not writable: %w", root, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// build wires an App around st; st is nil only for Check, whose App never
// serves.
func build(cfg *config.Config, log *slog.Logger, st *store.FS) (*App, error) {
	m := metrics.New()
	a := &App{Metrics: m, Store: st, Upstreams: map[string]*upstream.Registry{}, identities: map[string]string{}, cfg: cfg, log: log}
	ups := map[string]pull.Upstream{}
	for _, name := range sortedKeys(cfg.Registries) {
		rc := cfg.Registries[name]
		key := "registries." + name
		auth, err := credentials.For(name, rc.Auth, key+".auth")
		if err != nil {
			return nil, err
		}
		var mirrors []upstream.MirrorConfig
		for i, mc := range rc.Mirrors {
			mkey := fmt.Sprintf("%s.mirrors[%d]", key, i)
			mauth, err := credentials.For(hostOf(mc.URL), mc.Auth, mkey+".auth")
			if err != nil {
				return nil, err
			}
			mirrors = append(mirrors, upstream.MirrorConfig{URL: mc.URL, RepoPrefix: mc.RepoPrefix, Repositories: mc.Repositories, Auth: mauth})
		}
		u, err := upstream.New(upstream.Config{Name: name, URL: rc.URL, Auth: auth, Logger: log, Mirrors: mirrors, Reserve: rc.Reserve})
		if err != nil {
			return nil, fmt.Errorf("%s.url: %w", key, err)
		}
		ups[name] = u
		a.Upstreams[name] = u
		if rc.Auth != nil {
			a.identities[name] = rc.Auth.Username
			if a.identities[name] == "" {
				a.identities[name] = "docker-config"
			}
		}
	}
	a.Cache = pull.New(pull.Options{
		Store:        st,
		Upstreams:    ups,
		TagTTL:       cfg.TagTTL.D(),
		TagFallback:  cfg.TagFallback == "mirrors",
		TagIndexSize: cfg.TagIndexEntries,
		ListTTL:      cfg.TagsListTTL.D(),
		FetchTimeout: cfg.UpstreamTimeout.D(),
		Logger:       log,
		Metrics:      m,
	})
	router := &server.Router{Lookup: cfg.Lookup, DefaultRegistry: cfg.DefaultRegistry}
	m.Registry.MustRegister(newUpstreamCollector(a.Upstreams))
	sopt := server.Options{Router: router, Cache: a.Cache, Logger: log, Metrics: m, Admin: a.adminHandler(), BlobCopy: cfg.BlobCopy}
	if ca := cfg.ClientAuth; ca != nil {
		users, err := clientauth.Open(ca.Htpasswd)
		if err != nil {
			return nil, fmt.Errorf("client_auth.htpasswd: %w", err)
		}
		a.users = users
		sopt.ClientAuth, sopt.AnonymousRegistries = users, ca.AnonymousRegistries
		if ca.TokenKeyFile != "" {
			secret, err := os.ReadFile(ca.TokenKeyFile)
			if err != nil {
				return nil, fmt.Errorf("client_auth.token_key_file: %w", err)
			}
			if sopt.Tokens, err = clientauth.NewIssuerWithSecret(bytes.TrimSpace(secret)); err != nil {
				return nil, fmt.Errorf("client_auth.token_key_file %s: %w", ca.TokenKeyFile, err)
			}
		}
		log.Info("client authentication on", "htpasswd", ca.Htpasswd, "users", users.Users(), "anonymous_registries", strings.Join(ca.AnonymousRegistries, ","))
	}
	if t := cfg.TLS; t != nil {
		certs, err := newCertReloader(t.Certificate, t.Key, log)
		if err != nil {
			return nil, fmt.Errorf("tls.certificate %s / tls.key %s: %w", t.Certificate, t.Key, err)
		}
		a.certs = certs
		a.TLS = &tls.Config{GetCertificate: certs.GetCertificate, MinVersion: tls.VersionTLS12}
	}
	a.Handler = server.New(sopt)
	return a, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return u.Host
}

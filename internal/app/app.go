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
	"math"
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
	Store     store.Store
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
	// collectNow asks the collection loop for a pass now: the store ran
	// out of space.
	collectNow chan struct{}
}

// usersReloadEvery is how often the htpasswd file is checked for changes.
const usersReloadEvery = 10 * time.Second

// Run does the server's background work until ctx ends, and returns when
// all of it has: keeping the store under storage.max_size (and its size
// metric current), and reading client_auth.htpasswd again when it changes.
func (a *App) Run(ctx context.Context) {
	var wg sync.WaitGroup
	if a.users != nil {
		wg.Go(func() { a.watchUsers(ctx) })
	}
	wg.Go(func() { a.gcLoop(ctx) })
	wg.Wait()
}

// Close finishes the downloads in flight, so every blob a client was
// served is committed, or gives up on them when ctx ends.
func (a *App) Close(ctx context.Context) error { return a.Cache.Close(ctx) }

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

// gcLoop keeps the store under storage.max_size, every gc_interval and at
// once when a write found no space. Without max_size it only keeps the
// size metric current (a walk at most hourly; commits count in between).
func (a *App) gcLoop(ctx context.Context) {
	every := a.cfg.Storage.GCInterval.D()
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		a.collect(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.collectNow:
		}
	}
}

func (a *App) collect(ctx context.Context) {
	c, ok := a.Store.(store.Collector)
	if !ok {
		return
	}
	max := int64(a.cfg.Storage.MaxSize)
	if max <= 0 {
		max = math.MaxInt64
	}
	st, err := c.Collect(ctx, max, max/10*9, time.Now())
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("storage collection failed", "err", err)
		}
		return
	}
	a.Metrics.StoreBytes.Set(float64(c.Size()))
	if st.Evicted > 0 {
		a.Metrics.EvictedBytes.Add(float64(st.EvictedBytes))
		a.log.Info("evicted least recently used content", "blobs", st.Evicted, "bytes", st.EvictedBytes,
			"before", st.Bytes, "max_size", max)
	}
}

// New builds an App. It makes no network connection: regcache must start,
// and serve its cache, with every upstream down.
func New(cfg *config.Config, log *slog.Logger) (*App, error) {
	st, err := openStore(cfg.Storage)
	if err != nil {
		return nil, err
	}
	return build(cfg, log, st)
}

// Check builds everything New builds from cfg (upstream credentials, which
// reads password_env variables and password files, client logins, the token
// key, the TLS pair) and checks the store's settings, for `regcache serve
// --check-config`: storage.s3 is opened (which makes no network call), and
// storage.root must be a writable directory or one that can be made. A
// filesystem store is not opened: opening removes partial downloads, which
// may belong to a server already running on the same directory.
func Check(cfg *config.Config, log *slog.Logger) error {
	var st store.Store
	if cfg.Storage.S3 != nil {
		var err error
		if st, err = openStore(cfg.Storage); err != nil {
			return err
		}
	} else if err := checkStorageRoot(cfg.Storage.Root); err != nil {
		return err
	}
	_, err := build(cfg, log, st)
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
func build(cfg *config.Config, log *slog.Logger, st store.Store) (*App, error) {
	m := metrics.New()
	a := &App{Metrics: m, Store: st, Upstreams: map[string]*upstream.Registry{}, identities: map[string]string{}, cfg: cfg, log: log,
		collectNow: make(chan struct{}, 1)}
	ups := map[string]pull.Source{}
	limits := upstream.Limits{
		MaxBlobSize:    int64(cfg.MaxBlobSize),
		MinRate:        int64(cfg.MinTransferRate),
		MaxRetryAfter:  cfg.MaxRetryAfter.D(),
		ConnectTimeout: cfg.UpstreamConnectTimeout.D(),
		HeaderTimeout:  cfg.UpstreamHeaderTimeout.D(),
	}
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
		u, err := upstream.New(upstream.Config{Name: name, URL: rc.URL, Auth: auth, Logger: log, Metrics: m,
			Mirrors: mirrors, Reserve: rc.Reserve, Limits: limits, AllowPrivateRedirects: rc.AllowPrivateRedirects})
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
		Store:                st,
		Sources:              ups,
		TagTTL:               cfg.TagTTL.D(),
		TagFallback:          cfg.TagFallback == "mirrors",
		TagIndexSize:         cfg.TagIndexEntries,
		ListTTL:              cfg.TagsListTTL.D(),
		ListCacheBytes:       int64(cfg.ListCacheSize),
		FetchTimeout:         cfg.UpstreamTimeout.D(),
		RevalidateWait:       cfg.RevalidateWait.D(),
		StaleWhileRevalidate: cfg.StaleWhileRevalidate,
		MaxStale:             cfg.MaxStale.D(),
		HedgeDelay:           cfg.HedgeDelay.D(),
		RedirectExpiry:       redirectExpiry(cfg.Storage),
		OnNoSpace:            a.requestCollect,
		Logger:               log,
		Metrics:              m,
	})
	router := &server.Router{Lookup: cfg.Lookup, DefaultRegistry: cfg.DefaultRegistry}
	m.Registry.MustRegister(newUpstreamCollector(a.Upstreams))
	sopt := server.Options{Router: router, Cache: a.Cache, Logger: log, Metrics: m, Admin: a.adminHandler(),
		BlobCopy: cfg.BlobCopy, SendTimeout: cfg.SendTimeout.D()}
	if ca := cfg.ClientAuth; ca != nil {
		users, err := clientauth.Open(ca.Htpasswd)
		if err != nil {
			return nil, fmt.Errorf("client_auth.htpasswd: %w", err)
		}
		a.users = users
		sopt.ClientAuth = clientauth.NewLogins(users, clientauth.Options{Checked: m.ClientAuthChecks.Inc})
		sopt.AnonymousRegistries, sopt.MetricsLogin = ca.AnonymousRegistries, ca.Metrics == "login"
		if ca.TokenKeyFile != "" {
			secret, err := os.ReadFile(ca.TokenKeyFile)
			if err != nil {
				return nil, fmt.Errorf("client_auth.token_key_file: %w", err)
			}
			if sopt.Tokens, err = clientauth.NewIssuerWithSecret(bytes.TrimSpace(secret)); err != nil {
				return nil, fmt.Errorf("client_auth.token_key_file %s: %w", ca.TokenKeyFile, err)
			}
		}
		log.Info("client authentication on", "htpasswd", ca.Htpasswd, "users", users.Users(), "anonymous_registries", strings.Join(ca.AnonymousRegistries, ","), "metrics_login", sopt.MetricsLogin)
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

// requestCollect asks the collection loop for a pass now, without waiting.
func (a *App) requestCollect() {
	select {
	case a.collectNow <- struct{}{}:
	default:
	}
}

// openStore opens storage.s3 when configured, else the filesystem store
// under storage.root. Neither touches the network.
func openStore(c config.Storage) (store.Store, error) {
	if s := c.S3; s != nil {
		return store.OpenS3(context.Background(), store.S3Options{Bucket: s.Bucket, Region: s.Region,
			Endpoint: s.Endpoint, PathStyle: s.PathStyle, Prefix: s.Prefix, Redirect: s.Redirect})
	}
	return store.OpenFS(c.Root)
}

// redirectExpiry is storage.s3.redirect_expiry, or 0 (the cache's
// default) without storage.s3.
func redirectExpiry(c config.Storage) time.Duration {
	if c.S3 == nil {
		return 0
	}
	return c.S3.RedirectExpiry.D()
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

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

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regcache/regcache/internal/buildinfo"
	"github.com/regcache/regcache/internal/clientauth"
	"github.com/regcache/regcache/internal/cluster"
	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/credentials"
	"github.com/regcache/regcache/internal/dashboard"
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
	// coord is this replica's handle on its cluster; nil alone.
	coord *cluster.Coordinator
	// pulls ranks the images pulled most, for the dashboard.
	pulls *pullCounter
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
	if a.coord != nil {
		wg.Go(func() { a.coord.Run(ctx) })
	}
	wg.Wait()
}

// Close finishes the downloads in flight, so every blob a client was
// served is committed, or gives up on them when ctx ends; then it leaves
// the cluster.
func (a *App) Close(ctx context.Context) error {
	err := a.Cache.Close(ctx)
	if a.coord != nil {
		a.coord.Close()
	}
	return err
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
		lastErr = a.reloadUsers(lastErr)
	}
}

// reloadUsers reads the htpasswd file again if it changed; it returns the
// error text it logged, so the same error is logged once.
func (a *App) reloadUsers(lastErr string) string {
	changed, err := a.users.Reload()
	switch {
	case err != nil:
		if err.Error() != lastErr {
			a.log.Error("client_auth.htpasswd not reloaded; the previous users stay in force", "err", err)
		}
		return err.Error()
	case changed:
		a.log.Info("client_auth.htpasswd reloaded", "users", a.users.Users())
	}
	return ""
}

// Reload reads again what can change without a restart (SIGHUP): the
// htpasswd file and the TLS certificate and key. Both are also checked on
// their own every few seconds; the signal makes it immediate.
func (a *App) Reload() {
	if a.users != nil {
		a.reloadUsers("")
	}
	if a.certs != nil {
		a.certs.reloadNow()
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
	// Spool files left by a process that died belong to no download.
	os.RemoveAll(spoolDir(cfg.Storage))
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
		collectNow: make(chan struct{}, 1), pulls: newPullCounter()}
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
	var fleet pull.Fleet
	if cl := cfg.Cluster; cl != nil {
		c, err := newCoordinator(cl, a.Upstreams, log)
		if err != nil {
			return nil, err
		}
		a.coord, fleet = c, c
		m.Registry.MustRegister(newCoordinatorCollector(c))
	}
	a.Cache = pull.New(pull.Options{
		Fleet:                fleet,
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
		SpoolDir:             spoolDir(cfg.Storage),
		Logger:               log,
		Metrics:              m,
	})
	router := &server.Router{Lookup: cfg.Lookup, DefaultRegistry: cfg.DefaultRegistry}
	m.Registry.MustRegister(newUpstreamCollector(a.Upstreams), buildinfo.Collector(buildinfo.Read()),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "regcache_downloads_in_flight", Help: "Blob downloads running now."},
			func() float64 { n, _ := a.Cache.Downloads(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "regcache_downloads_memory_bytes", Help: "Memory the downloads in flight hold for the clients streaming them (bounded)."},
			func() float64 { _, b := a.Cache.Downloads(); return float64(b) }))
	dash := dashboard.New(dashboard.Options{Data: dashboardData{a}, Metrics: m.Registry, Version: buildinfo.Read().Version})
	sopt := server.Options{Router: router, Cache: a.Cache, Logger: log, Metrics: m, Admin: a.adminHandler(dash),
		Dashboard: dash, Pulls: a.pulls, Ready: &readiness{store: st, now: time.Now, coord: a.coord},
		BlobCopy: cfg.BlobCopy, SendTimeout: cfg.SendTimeout.D()}
	if a.coord != nil {
		sopt.Peers = a.coord
	}
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

// spoolDir is where downloads whose store cannot read back (S3) keep their
// bytes for clients who fall behind: under storage.root, which is sized for
// content, not under /tmp.
func spoolDir(c config.Storage) string { return filepath.Join(c.Root, "spool") }

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

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/credentials"
	"github.com/regcache/regcache/internal/metrics"
	"github.com/regcache/regcache/internal/pull"
	"github.com/regcache/regcache/internal/server"
	"github.com/regcache/regcache/internal/store"
	"github.com/regcache/regcache/internal/upstream"
)

func newServeCmd() *cobra.Command {
	var cfgPath, listen string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the caching registry",
		Long: `Run the pull-through caching registry.

Without --config, regcache runs on its embedded defaults: it listens on :5000,
stores content under ./regcache-data and caches docker.io, ghcr.io, quay.io,
gcr.io, registry.k8s.io and public.ecr.aws.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			if listen != "" {
				cfg.Listen = listen
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return serve(ctx, cfg, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "c", os.Getenv("REGCACHE_CONFIG"), "YAML config file (default: embedded defaults; env REGCACHE_CONFIG)")
	cmd.Flags().StringVar(&listen, "listen", "", "listen address, overrides the config's listen key")
	return cmd
}

func newLogger(level string, w interface{ Write([]byte) (int, error) }) *slog.Logger {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

// build wires the configured parts together: store, upstreams, cache, server.
func build(cfg *config.Config, log *slog.Logger) (http.Handler, error) {
	st, err := store.OpenFS(cfg.Storage.Root)
	if err != nil {
		return nil, err
	}
	m := metrics.New()
	ups := map[string]pull.Upstream{}
	names := make([]string, 0, len(cfg.Registries))
	for name := range cfg.Registries {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		rc := cfg.Registries[name]
		key := "registries." + name
		auth, err := credentials.For(name, rc.Auth, key+".auth")
		if err != nil {
			return nil, err
		}
		u, err := upstream.New(upstream.Config{Name: name, URL: rc.URL, Auth: auth, Logger: log.With("registry", name)})
		if err != nil {
			return nil, fmt.Errorf("%s.url: %w", key, err)
		}
		ups[name] = u
	}
	cache := pull.New(pull.Options{
		Store:        st,
		Upstreams:    ups,
		TagTTL:       cfg.TagTTL.D(),
		ListTTL:      cfg.TagsListTTL.D(),
		FetchTimeout: cfg.UpstreamTimeout.D(),
		Logger:       log,
		Metrics:      m,
	})
	router := &server.Router{Lookup: cfg.Lookup, DefaultRegistry: cfg.DefaultRegistry}
	return server.New(server.Options{Router: router, Cache: cache, Logger: log, Metrics: m}), nil
}

func serve(ctx context.Context, cfg *config.Config, logw interface{ Write([]byte) (int, error) }) error {
	log := newLogger(cfg.LogLevel, logw)
	h, err := build(cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 15 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	regs := make([]string, 0, len(cfg.Registries))
	for name := range cfg.Registries {
		regs = append(regs, name)
	}
	sort.Strings(regs)
	log.Info("regcache serving", "addr", ln.Addr().String(), "storage", cfg.Storage.Root,
		"tag_ttl", cfg.TagTTL.D().String(), "default_registry", cfg.DefaultRegistry, "registries", strings.Join(regs, ","))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

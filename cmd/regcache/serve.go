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
	"golang.org/x/net/netutil"

	"github.com/regcache/regcache/internal/app"
	"github.com/regcache/regcache/internal/config"
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

func serve(ctx context.Context, cfg *config.Config, logw interface{ Write([]byte) (int, error) }) error {
	log := newLogger(cfg.LogLevel, logw)
	a, err := app.New(cfg, log)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// More connections than this wait in the kernel's backlog rather than
	// each costing a goroutine and buffers here.
	ln = netutil.LimitListener(ln, cfg.MaxConnections)
	srv := &http.Server{
		Handler:           a.Handler,
		ReadHeaderTimeout: 15 * time.Second,
		IdleTimeout:       2 * time.Minute,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: cfg.HTTP2MaxStreams},
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	scheme, run := "http", func() error { return srv.Serve(ln) }
	if a.TLS != nil {
		// ServeTLS, not a tls.Listener: it offers HTTP/2 too.
		srv.TLSConfig = a.TLS
		scheme, run = "https", func() error { return srv.ServeTLS(ln, "", "") }
	}
	regs := make([]string, 0, len(cfg.Registries))
	for name := range cfg.Registries {
		regs = append(regs, name)
	}
	sort.Strings(regs)
	log.Info("regcache serving", "addr", ln.Addr().String(), "scheme", scheme, "storage", cfg.Storage.Root,
		"tag_ttl", cfg.TagTTL.D().String(), "default_registry", cfg.DefaultRegistry, "registries", strings.Join(regs, ","))
	errc := make(chan error, 1)
	go func() { errc <- run() }()
	bgctx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	background := make(chan struct{})
	go func() {
		defer close(background)
		a.Run(bgctx)
	}()
	defer func() {
		stopBackground()
		<-background
	}()
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
	// Downloads clients were served from are committed before exit; one
	// that cannot finish in time is simply fetched again after a restart.
	dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer dcancel()
	if err := a.Close(dctx); err != nil {
		log.Warn("exiting with downloads in flight", "err", err)
	}
	return nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// configYAMLEnv carries the whole config file's text, for platforms that
// can set environment variables but not mount files (ECS on Fargate).
const configYAMLEnv = "REGCACHE_CONFIG_YAML"

func newServeCmd() *cobra.Command {
	var cfgPath, listen string
	var checkOnly bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the caching registry",
		Long: `Run the pull-through caching registry.

The config comes from --config, else from the YAML text in
$` + configYAMLEnv + `, else from the file $REGCACHE_CONFIG names. Without any of
them, regcache runs on its embedded defaults: it listens on :5000, stores content under
./regcache-data and caches docker.io, ghcr.io, quay.io, gcr.io,
registry.k8s.io and public.ecr.aws.

--check-config loads and validates the config and builds the server from it
(reading every password_env variable and password, htpasswd, token key and
TLS file, and checking that storage.root is writable) without listening, then
exits 0; an error names the key or file at fault.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, source, err := loadServeConfig(cfgPath)
			if err != nil {
				return err
			}
			if listen != "" {
				cfg.Listen = listen
			}
			if checkOnly {
				log := newLogger(cfg.LogLevel, cfg.LogFormat, cmd.ErrOrStderr())
				if err := app.Check(cfg, log); err != nil {
					return fmt.Errorf("%s: %w", source, err)
				}
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s: config OK\n", source)
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			reload := func() (*config.Config, error) {
				cfg, _, err := loadServeConfig(cfgPath)
				return cfg, err
			}
			return serve(ctx, cfg, reload, cmd.ErrOrStderr())
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "c", "", "YAML config file (default: the text in $"+configYAMLEnv+", else the file $REGCACHE_CONFIG names, else the embedded defaults)")
	cmd.Flags().StringVar(&listen, "listen", "", "listen address, overrides the config's listen key")
	cmd.Flags().BoolVar(&checkOnly, "check-config", false, "load, validate and build the server from the config without listening, then exit")
	return cmd
}

// loadServeConfig reads the config from the file --config names, else
// from the text in $REGCACHE_CONFIG_YAML, else from the file
// $REGCACHE_CONFIG names, else the embedded defaults; source says which.
// The inline text outranks $REGCACHE_CONFIG because the image sets that
// variable to its default file; with an explicit --config it is an error.
func loadServeConfig(flagPath string) (cfg *config.Config, source string, err error) {
	text, inline := os.LookupEnv(configYAMLEnv)
	switch envPath := os.Getenv("REGCACHE_CONFIG"); {
	case flagPath != "" && inline:
		return nil, "", fmt.Errorf("both --config %s and $%s are set; use one", flagPath, configYAMLEnv)
	case flagPath != "":
		cfg, err = config.Load(flagPath)
		return cfg, flagPath, err
	case inline:
		cfg, err = config.Parse([]byte(text), "$"+configYAMLEnv)
		return cfg, "$" + configYAMLEnv, err
	case envPath != "":
		cfg, err = config.Load(envPath)
		return cfg, envPath, err
	}
	return config.Default(), "embedded defaults", nil
}

// newLogger builds the server's logger from log_level and log_format.
func newLogger(level, format string, w io.Writer) *slog.Logger {
	lv := new(slog.LevelVar)
	lv.Set(parseLevel(level))
	return newLeveledLogger(lv, format, w)
}

func newLeveledLogger(lv *slog.LevelVar, format string, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func parseLevel(level string) slog.Level {
	switch strings.ToLower(level) {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// serve runs the server until ctx ends. On SIGHUP it reloads what can
// change without a restart: log_level (from the config, read again with
// reload), the htpasswd file and the TLS pair; other changed keys are
// reported as needing a restart.
func serve(ctx context.Context, cfg *config.Config, reload func() (*config.Config, error), logw io.Writer) error {
	level := new(slog.LevelVar)
	level.Set(parseLevel(cfg.LogLevel))
	log := newLeveledLogger(level, cfg.LogFormat, logw)
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
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for waiting := true; waiting; {
		select {
		case err := <-errc:
			return err
		case <-hup:
			reloadOnSignal(log, level, cfg, reload, a)
		case <-ctx.Done():
			waiting = false
		}
	}
	// One grace period for everything, so the whole shutdown fits in the
	// orchestrator's (Kubernetes waits 30 s before SIGKILL): first the
	// requests in progress finish, then the downloads clients were served
	// from are committed; one that cannot finish in time is fetched again
	// after a restart.
	grace := cfg.ShutdownGrace.D()
	log.Info("shutting down", "grace", grace)
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if err := a.Close(sctx); err != nil {
		log.Warn("exiting with work in flight", "err", err)
	}
	return nil
}

// reloadOnSignal applies a SIGHUP. A config that no longer loads changes
// nothing.
func reloadOnSignal(log *slog.Logger, level *slog.LevelVar, cfg *config.Config, reload func() (*config.Config, error), a *app.App) {
	a.Reload()
	next, err := reload()
	if err != nil {
		log.Error("SIGHUP: the config does not load; nothing but the htpasswd file and the TLS pair was reloaded", "err", err)
		return
	}
	if next.LogLevel != cfg.LogLevel {
		level.Set(parseLevel(next.LogLevel))
		cfg.LogLevel = next.LogLevel
	}
	restart := config.Changed(cfg, next, "log_level")
	log.Info("SIGHUP: reloaded the htpasswd file, the TLS pair and log_level", "log_level", next.LogLevel,
		"changed_keys_needing_a_restart", strings.Join(restart, ","))
}

// Command regcachepprof is regcache's serve command with net/http/pprof on a
// second loopback listener, for the benchmark harness only (go run ./bench
// -pprof DIR builds it instead of ./cmd/regcache). It builds the server
// through app.New exactly like `regcache serve` and uses the same
// http.Server settings; keep those in step with cmd/regcache/serve.go.
//
//	regcachepprof serve --config FILE
//
// REGCACHE_PPROF=127.0.0.1:port enables the profiling listener, which also
// answers /bench/start?name=X (start a CPU profile, snapshot allocations)
// and /bench/stop?name=X (write X.cpu.pprof and X.allocs.pprof, the
// allocations made in between, into REGCACHE_PPROF_DIR).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"github.com/regcache/regcache/internal/app"
	"github.com/regcache/regcache/internal/config"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "serve" {
		fmt.Fprintln(os.Stderr, "usage: regcachepprof serve --config FILE")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	cfgPath := fs.String("config", "", "config file")
	_ = fs.Parse(os.Args[2:])
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a, err := app.New(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if addr := os.Getenv("REGCACHE_PPROF"); addr != "" {
		p := &profiler{dir: os.Getenv("REGCACHE_PPROF_DIR")}
		http.HandleFunc("/bench/start", p.start)
		http.HandleFunc("/bench/stop", p.stop)
		go func() { fmt.Fprintln(os.Stderr, http.ListenAndServe(addr, nil)) }()
	}
	srv := &http.Server{
		Handler:           a.Handler,
		ReadHeaderTimeout: 15 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	shut := make(chan struct{})
	go func() {
		defer close(shut)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	<-shut
	// As regcache serve does: commit the downloads clients were served from.
	dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = a.Cache.Drain(dctx)
}

type profiler struct {
	dir string
	mu  sync.Mutex
	cpu *os.File
}

func (p *profiler) start(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	name := filepath.Base(r.URL.Query().Get("name"))
	runtime.GC()
	if f, err := os.Create(filepath.Join(p.dir, name+".allocs0.pprof")); err == nil {
		_ = pprof.Lookup("allocs").WriteTo(f, 0)
		f.Close()
	}
	f, err := os.Create(filepath.Join(p.dir, name+".cpu.pprof"))
	if err != nil {
		http.Error(w, err.Error(), 500)
		return
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		http.Error(w, err.Error(), 500)
		return
	}
	p.cpu = f
}

func (p *profiler) stop(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	name := filepath.Base(r.URL.Query().Get("name"))
	if p.cpu != nil {
		pprof.StopCPUProfile()
		p.cpu.Close()
		p.cpu = nil
	}
	if f, err := os.Create(filepath.Join(p.dir, name+".allocs.pprof")); err == nil {
		_ = pprof.Lookup("allocs").WriteTo(f, 0)
		f.Close()
	}
}

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/testhub"
)

// SIGHUP reloads log_level (and names the keys that need a restart)
// instead of ending the server; /readyz says whether the store is writable.
func TestSIGHUPReloadsAndReadyz(t *testing.T) {
	dir := t.TempDir()
	addr, err := testhub.FreeAddr("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	text := func(level, ttl string) string {
		return fmt.Sprintf("listen: %s\nstorage: {root: %s}\nlog_level: %s\ntag_ttl: %s\nregistries:\n  ghcr.io: {url: http://127.0.0.1:1}\n",
			addr, filepath.Join(dir, "data"), level, ttl)
	}
	cfg, err := config.Parse([]byte(text("info", "5m")), "test")
	if err != nil {
		t.Fatal(err)
	}
	// A signal is no synchronisation: the reload reads the text atomically.
	var next atomic.Pointer[string]
	next.Store(new(text("info", "5m")))
	reload := func() (*config.Config, error) { return config.Parse([]byte(*next.Load()), "test") }
	ctx, cancel := context.WithCancel(t.Context())
	logs := testhub.NewTailBuffer(0)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, reload, logs) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	base := "http://" + addr
	waitFor(t, "the server to listen", func() bool { _, err := http.Get(base + "/healthz"); return err == nil })

	if code, body := get(t, base+"/readyz"); code != 200 || !strings.Contains(body, `"ready":true`) {
		t.Fatalf("/readyz: %d %s", code, body)
	}

	next.Store(new(text("debug", "1m")))
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reload to be logged", func() bool { return strings.Contains(logs.String(), "SIGHUP: reloaded") })
	if l := logs.String(); !strings.Contains(l, "log_level=debug") || !strings.Contains(l, "changed_keys_needing_a_restart=tag_ttl") {
		t.Fatalf("reload log: %s", l)
	}
	get(t, base+"/v2/")
	waitFor(t, "a debug request line", func() bool { return strings.Contains(logs.String(), "msg=request") })
	select {
	case err := <-done:
		t.Fatalf("SIGHUP ended the server: %v", err)
	default:
	}

	// A store that cannot take a write makes the replica not ready.
	health := filepath.Join(dir, "data", "meta", "health")
	if err := os.RemoveAll(health); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(health, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "/readyz to report the store", func() bool {
		code, body := get(t, base+"/readyz")
		return code == 503 && strings.Contains(body, `"store":"not writable`)
	})
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz %d: liveness must not depend on the store", code)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !ok(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

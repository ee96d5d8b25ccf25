package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/ref"
)

func TestPublicAddr(t *testing.T) {
	tests := map[string]bool{
		"8.8.8.8": true, "2606:4700::1111": true,
		"10.1.2.3": false, "172.16.0.1": false, "192.168.1.1": false, "127.0.0.1": false, "::1": false,
		"169.254.169.254": false, "fd00:ec2::254": false, "fe80::1": false, "100.64.0.1": false,
		"0.0.0.0": false, "::": false, "224.0.0.1": false, "::ffff:127.0.0.1": false,
	}
	for addr, want := range tests {
		if got := publicAddr(netip.MustParseAddr(addr)); got != want {
			t.Errorf("publicAddr(%s) = %v, want %v", addr, got, want)
		}
	}
}

func TestPrivateHost(t *testing.T) {
	tests := map[string]bool{
		"127.0.0.1:5000": true, "localhost:5000": true, "registry.localhost": true, "10.0.0.5": true,
		"registry-1.docker.io": false, "8.8.8.8:443": false, "ghcr.io": false,
	}
	for host, want := range tests {
		if got := privateHost(host); got != want {
			t.Errorf("privateHost(%s) = %v, want %v", host, got, want)
		}
	}
}

func TestDialGuard(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := ln.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	tests := []struct {
		name         string
		allowed      []string
		allowPrivate bool
		dial         string
		refused      bool
	}{
		{"a configured host", []string{addr}, false, addr, false},
		{"loopback, not configured", []string{"127.0.0.1:1"}, false, addr, true},
		{"localhost by name", nil, false, "localhost:" + port, true},
		{"allowed by config", nil, true, addr, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := newDialGuard("docker.io", tc.allowPrivate, time.Second, tc.allowed...)
			c, err := g.DialContext(context.Background(), "tcp", tc.dial)
			if c != nil {
				c.Close()
			}
			if refused := errors.Is(err, errPrivateAddress); refused != tc.refused {
				t.Fatalf("dial %s: %v, refused=%v want %v", tc.dial, err, refused, tc.refused)
			}
			if tc.refused && !strings.Contains(err.Error(), "registries.docker.io.allow_private_redirects") {
				t.Errorf("the error does not name the config key: %v", err)
			}
		})
	}
}

// A registry on a loopback address may redirect within loopback only when
// its config allows it; refused, the redirect target is never contacted.
func TestPrivateRedirectRefused(t *testing.T) {
	blob := []byte("layer")
	d := digest.FromBytes(blob)
	var reached atomic.Int32
	cdn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		w.Write(blob)
	}))
	defer cdn.Close()
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		http.Redirect(w, r, cdn.URL+"/blob", http.StatusTemporaryRedirect)
	}))
	defer origin.Close()
	repo, _ := ref.NewRepo("docker.io", "library/alpine")
	for _, allow := range []bool{false, true} {
		r, err := New(Config{Name: "docker.io", URL: origin.URL, AllowPrivateRedirects: &allow})
		if err != nil {
			t.Fatal(err)
		}
		before := reached.Load()
		b, err := r.Blob(context.Background(), repo, d, -1)
		if !allow {
			if err == nil {
				b.Close()
				t.Fatal("a redirect to loopback was followed")
			}
			if reached.Load() != before {
				t.Fatal("the redirect target was contacted")
			}
			if !strings.Contains(err.Error(), "allow_private_redirects") {
				t.Errorf("the error does not say how to allow it: %v", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("allowed: %v", err)
		}
		b.Close()
	}
}

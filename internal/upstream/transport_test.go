package upstream

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// firstByteListener records, for every accepted connection, whether it
// opened with a TLS handshake record (0x16) or with anything else.
type firstByteListener struct {
	net.Listener
	tls, plain atomic.Int64
}

func (l *firstByteListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &firstByteConn{Conn: c, l: l}, nil
}

type firstByteConn struct {
	net.Conn
	l    *firstByteListener
	once sync.Once
}

func (c *firstByteConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.once.Do(func() {
			if p[0] == 0x16 {
				c.l.tls.Add(1)
			} else {
				c.l.plain.Add(1)
			}
		})
	}
	return n, err
}

// TestSchemeIsPinned: regcache talks to an upstream only by the scheme its
// URL names. go-containerregistry's ping would also try https against an
// http:// upstream, and http against an https:// upstream on a local name.
func TestSchemeIsPinned(t *testing.T) {
	for _, tc := range []struct {
		name      string
		scheme    string
		auth      string
		wantOK    bool
		wantTLS   int64
		wantPlain bool
	}{
		{"http upstream, anonymous: no TLS handshake", "http", "anon", true, 0, true},
		{"http upstream, bearer: no TLS handshake", "http", "bearer", true, 0, true},
		{"https upstream on 127.0.0.1: never downgraded to http", "https", "bearer", false, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeRegistry(t, tc.auth)
			d := f.putManifest("library/alpine", "3.20", ocispec.MediaTypeImageManifest, []byte(testManifest))
			srv := httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
			l := &firstByteListener{Listener: srv.Listener}
			srv.Listener = l
			srv.Start()
			t.Cleanup(srv.Close)
			host := srv.Listener.Addr().String()

			cfg := Config{URL: tc.scheme + "://" + host}
			if tc.auth != "anon" {
				cfg.Auth = credsFor(f)
			}
			r := newRegistryT(t, cfg, newFakeClock())
			_, err := r.Manifest(context.Background(), repo(t, "library/alpine"), d, AnySource)
			if ok := err == nil; ok != tc.wantOK {
				t.Fatalf("Manifest: err %v, want success %v", err, tc.wantOK)
			}
			if got := l.tls.Load(); got != tc.wantTLS {
				t.Errorf("%d TLS handshakes reached the upstream, want %d", got, tc.wantTLS)
			}
			if got := l.plain.Load() > 0; got != tc.wantPlain {
				t.Errorf("plain-HTTP connections: %v, want %v", got, tc.wantPlain)
			}
		})
	}
}

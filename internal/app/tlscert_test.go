package app

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/testhub"
)

// A certificate rotated on disk (cert-manager, certbot) is served without a
// restart; a pair that does not load leaves the previous one in service.
func TestTLSCertificateRotates(t *testing.T) {
	dir := t.TempDir()
	first := testhub.SelfSignedCert(t, dir)
	cfg, err := config.Parse(fmt.Appendf(nil, "storage: {root: %s}\nregistries:\n  docker.io: {url: http://127.0.0.1:1}\ntls: {certificate: %s, key: %s}\n",
		t.TempDir(), first.CertFile, first.KeyFile), "test")
	if err != nil {
		t.Fatal(err)
	}
	logs := testhub.NewTailBuffer(0)
	a, err := New(cfg, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Now()
	a.certs.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func() { mu.Lock(); now = now.Add(certCheckEvery); mu.Unlock() }

	ln, err := tls.Listen("tcp", "127.0.0.1:0", a.TLS)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: a.Handler}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	served := func() *big.Int {
		t.Helper()
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber
	}
	serial := func(c testhub.Cert) *big.Int {
		pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		return pair.Leaf.SerialNumber
	}
	touchLater := func(files ...string) {
		for _, f := range files {
			later := time.Now().Add(time.Minute)
			os.Chtimes(f, later, later)
		}
	}

	firstSerial := serial(first)
	if got := served(); got.Cmp(firstSerial) != 0 {
		t.Fatalf("served serial %v, want the configured certificate's %v", got, firstSerial)
	}
	second := testhub.SelfSignedCert(t, dir) // rotated in place
	touchLater(second.CertFile, second.KeyFile)
	if got := served(); got.Cmp(firstSerial) != 0 {
		t.Error("the files were read again before certCheckEvery passed")
	}
	advance()
	if got, want := served(), serial(second); got.Cmp(want) != 0 {
		t.Errorf("after rotation: serial %v, want the new certificate's %v", got, want)
	}

	// Half a rotation: a new certificate without its key.
	secondSerial := serial(second)
	if err := os.WriteFile(second.CertFile, []byte("-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	touchLater(second.CertFile)
	for range 3 {
		advance()
		if got := served(); got.Cmp(secondSerial) != 0 {
			t.Fatalf("a broken rotation replaced the certificate in service")
		}
	}
	if n := strings.Count(logs.String(), "tls certificate not reloaded"); n != 1 {
		t.Errorf("the broken pair was reported %d times, want once", n)
	}
}

package app

import (
	"crypto/tls"
	"log/slog"
	"os"
	"sync"
	"time"
)

// certCheckEvery bounds how often the certificate files are looked at: a
// rotated certificate (cert-manager, certbot) is in use within this long,
// and a handshake costs at most two stat calls every so often.
const certCheckEvery = 10 * time.Second

// certReloader serves the certificate in the tls files and reads them
// again when they change, so certificates rotate without a restart. A pair
// that does not load keeps the previous one in service.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger
	now               func() time.Time

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     [2]time.Time // modification times of the files last loaded
	checked   time.Time
	lastError string
}

func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log, now: time.Now}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) load() error {
	var stamp [2]time.Time
	for i, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return err
		}
		stamp[i] = fi.ModTime()
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return err
	}
	r.cert, r.stamp = &cert, stamp
	return nil
}

// GetCertificate is tls.Config.GetCertificate.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Sub(r.checked) >= certCheckEvery {
		r.checked = now
		r.reloadIfChangedLocked()
	}
	return r.cert, nil
}

// reloadNow checks the files at once (SIGHUP), not at the next handshake.
func (r *certReloader) reloadNow() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checked = r.now()
	r.reloadIfChangedLocked()
}

func (r *certReloader) reloadIfChangedLocked() {
	changed := false
	for i, f := range []string{r.certFile, r.keyFile} {
		if fi, err := os.Stat(f); err == nil && !fi.ModTime().Equal(r.stamp[i]) {
			changed = true
		}
	}
	if !changed {
		return
	}
	if err := r.load(); err != nil {
		// A certificate and key written one after the other do not match
		// in between; the next check picks up the pair.
		if msg := err.Error(); msg != r.lastError {
			r.log.Error("tls certificate not reloaded; the previous one stays in service", "certificate", r.certFile, "key", r.keyFile, "err", err)
			r.lastError = msg
		}
		return
	}
	r.lastError = ""
	r.log.Info("tls certificate reloaded", "certificate", r.certFile, "not_after", r.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
}

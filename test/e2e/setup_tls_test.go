package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// e2eHostname is the name dockerd reaches regcache by over TLS; the /etc
// overlay's hosts file maps it to ::1.
const e2eHostname = "regcache.e2e.test"

// TestSetupCAFileConfigsPullOverTLS: for a regcache that serves HTTPS with
// a certificate from a private CA, what `regcache setup <engine> --ca-file
// --write` installs is all that ctr, podman and dockerd need to verify it
// and pull through it. dockerd runs with the files at their standard paths
// (/etc/docker/daemon.json and /etc/docker/certs.d/<host>/), and is shown
// to fail without the CA.
func TestSetupCAFileConfigsPullOverTLS(t *testing.T) {
	w := newWorld(t)
	caFile, cert := privateCA(t, w.mkdir("tls"), e2eHostname)
	images, _, rc := startHubAndRegcacheWith(t, w, testhub.Options{}, regcacheConfig{cert: &cert})
	server := "https://" + rc.host()

	engines := []struct {
		name  string
		setup func(t *testing.T) pullFunc
	}{
		{"containerd", func(t *testing.T) pullFunc {
			dir := w.mkdir("setup-ca-containerd", "certs.d")
			writeSetupTwice(t, w, dir, "containerd", "--server", server, "--ca-file", caFile, "--path", dir)
			return ctrPuller(t, w, startContainerd(t, w, "containerd-ca"), dir)
		}},
		{"docker-hosts-toml", func(t *testing.T) pullFunc {
			dir := w.mkdir("setup-ca-docker-hosts-toml", "certs.d")
			writeSetupTwice(t, w, dir, "docker", "--hosts-toml", "--server", server, "--ca-file", caFile, "--path", dir)
			return ctrPuller(t, w, startContainerd(t, w, "containerd-ca-docker-hosts"), dir)
		}},
		{"podman", func(t *testing.T) pullFunc {
			root := w.mkdir("setup-ca-podman")
			policy, env := writeContainersConfig(t, w, "podman-ca", "")
			dir := podmanDropInDir(w)
			writeSetupTwice(t, w, dir, "podman", "--server", server, "--ca-file", caFile, "--root", root, "--path", filepath.Join(dir, "50-regcache.conf"))
			// podman as root reads /etc/containers/certs.d; the CA was
			// installed under root, so that directory is named explicitly.
			return podmanPuller(t, w, policy, env, "--cert-dir", filepath.Join(root, "etc", "containers", "certs.d", rc.host()))
		}},
		{"dockerd", func(t *testing.T) pullFunc {
			return setupDockerdOverTLS(t, w, rc, caFile, images[0])
		}},
	}
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			pull := e.setup(t)
			for _, img := range images {
				if got := pull(t, img); got != img.want {
					t.Errorf("%s pulled docker.io/%s:%s with digest %q, upstream has %s", e.name, img.repo, img.tag, got, img.want)
				}
			}
		})
	}
}

// setupDockerdOverTLS runs `regcache setup docker --ca-file --write` into
// a root, starts dockerd in a mount namespace where that root's etc is laid
// over /etc, and checks that a pull fails while the CA is moved away.
//
// dockerd skips certificate checks for registries in 127.0.0.0/8 (its
// built-in insecure range), so a CA would prove nothing there: dockerd
// reaches regcache by a name that resolves to ::1, through a TCP relay to
// regcache's port.
func setupDockerdOverTLS(t *testing.T, w *world, rc *regcache, caFile string, probe testImage) pullFunc {
	relayAddr := relay(t, "[::1]:0", rc.host())
	_, port, _ := net.SplitHostPort(relayAddr)
	host := e2eHostname + ":" + port
	root := w.mkdir("setup-ca-dockerd")
	etc := filepath.Join(root, "etc")
	if err := os.MkdirAll(filepath.Join(etc, "docker"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeJSON(t, filepath.Join(etc, "docker", "daemon.json"), dockerdBaseConfig(w))
	hosts := readFile(t, "/etc/hosts") + "\n::1 " + e2eHostname + "\n"
	if err := os.WriteFile(filepath.Join(etc, "hosts"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	writeSetupTwice(t, w, root, "docker", "--server", "https://"+host, "--ca-file", caFile, "--root", root)

	etcOverlay(t, w, root)
	docker, env := startDockerdWithConfig(t, w, "/etc/docker/daemon.json")
	installed := filepath.Join("/etc/docker/certs.d", host, "regcache-ca.crt")
	if _, err := os.Stat(installed); err != nil {
		t.Fatalf("setup installed no CA where dockerd reads it: %v", err)
	}
	// Without the CA, dockerd refuses the mirror's certificate (and then
	// cannot reach Docker Hub from the namespace): the CA is what works.
	if err := os.Rename(installed, installed+".off"); err != nil {
		t.Fatal(err)
	}
	if out, err := w.run(t.Context(), pullTimeout, env, docker, "pull", probe.bareName()); err == nil {
		t.Fatalf("dockerd pulled through the HTTPS mirror without its CA:\n%s", out)
	}
	if !dockerdLogged(t, w, "certificate signed by unknown authority") {
		t.Error("without the CA, dockerd did not log a certificate error for the mirror")
	}
	if err := os.Rename(installed+".off", installed); err != nil {
		t.Fatal(err)
	}
	return dockerPuller(w, docker, env)
}

// dockerdLogged reports whether a dockerd log of the world contains s.
func dockerdLogged(t *testing.T, w *world, s string) bool {
	logs, _ := filepath.Glob(filepath.Join(w.logs, "*-dockerd.log"))
	for _, l := range logs {
		if strings.Contains(readFile(t, l), s) {
			return true
		}
	}
	return false
}

// etcOverlay gives the calling goroutine a thread of its own in a private
// mount namespace where /etc is the host's /etc with root/etc laid over it
// (overlayfs): the files `setup --write --root root` installed appear at
// their standard paths, for this goroutine and every process it starts
// from now on, and for nothing else on the machine. The goroutine stays
// locked to the thread, so the runtime discards the thread when the
// goroutine ends (Go never clones new threads from a locked one).
func etcOverlay(t *testing.T, w *world, root string) {
	t.Helper()
	runtime.LockOSThread()
	if err := syscall.Unshare(syscall.CLONE_NEWNS); err != nil {
		t.Fatalf("unshare mount namespace: %v", err)
	}
	if err := syscall.Mount("none", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		t.Fatalf("make mounts private: %v", err)
	}
	work, err := os.MkdirTemp(root, ".overlay-work-")
	if err != nil {
		t.Fatal(err)
	}
	opts := "lowerdir=/etc,upperdir=" + filepath.Join(root, "etc") + ",workdir=" + work
	if err := syscall.Mount("overlay", "/etc", "overlay", 0, opts); err != nil {
		t.Fatalf("overlay /etc with %s: %v", root, err)
	}
}

// relay forwards TCP connections from listen to target, untouched (TLS
// passes through), until the test ends. It returns the address it listens
// on.
func relay(t *testing.T, listen, target string) string {
	t.Helper()
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("relay: %v (the e2e tests need IPv6 on loopback)", err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				u, err := net.DialTimeout("tcp", target, 5*time.Second)
				if err != nil {
					return
				}
				defer u.Close()
				done := make(chan struct{}, 2)
				pipe := func(dst, src net.Conn) {
					_, _ = io.Copy(dst, src)
					if tc, ok := dst.(*net.TCPConn); ok {
						_ = tc.CloseWrite()
					}
					done <- struct{}{}
				}
				go pipe(u, c)
				go pipe(c, u)
				<-done
				<-done
			}()
		}
	}()
	return l.Addr().String()
}

// privateCA makes a CA and a server certificate it signs, for name,
// localhost and the loopback addresses, as an operator's private PKI
// would. It returns the CA certificate file (what --ca-file is given) and
// regcache's certificate.
func privateCA(t *testing.T, dir, name string) (string, testhub.Cert) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "regcache e2e private CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{name, "localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, typ string, der []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert := testhub.Cert{
		CertFile: write("tls.crt", "CERTIFICATE", leafDER, 0o644),
		KeyFile:  write("tls.key", "PRIVATE KEY", keyDER, 0o600),
		Pool:     x509.NewCertPool(),
	}
	cert.Pool.AddCert(caCert)
	return write("ca.crt", "CERTIFICATE", caDER, 0o644), cert
}

// TestSetupPodmanDropInLogsIn: with client_auth and no anonymous
// registries, the podman drop-in still pulls docker.io names through
// regcache once podman has logged in to regcache as the setup output says:
// podman uses the mirror's own login for the mirror. Without the login the
// pull is refused (and cannot go anywhere else from the namespace).
func TestSetupPodmanDropInLogsIn(t *testing.T) {
	w := newWorld(t)
	caFile, cert := privateCA(t, w.mkdir("tls"), e2eHostname)
	user, password := "ci", randomSecret(t)
	images, _, rc := startHubAndRegcacheWith(t, w, testhub.Options{}, regcacheConfig{cert: &cert, htpasswd: writeHtpasswd(t, w, user, password)})
	root := w.mkdir("setup-podman-login")
	policy, env := writeContainersConfig(t, w, "podman-login", "")
	dir := podmanDropInDir(w)
	writeSetupTwice(t, w, dir, "podman", "--server", "https://"+rc.host(), "--ca-file", caFile, "--username", user, "--root", root, "--path", filepath.Join(dir, "50-regcache.conf"))
	certDir := filepath.Join(root, "etc", "containers", "certs.d", rc.host())
	bin := requireBinary(t, "podman", "podman")

	out, err := w.run(t.Context(), pullTimeout, env, bin, "pull", "--signature-policy", policy, "--cert-dir", certDir, "docker.io/"+images[0].repo+":"+images[0].tag)
	if err == nil {
		t.Fatalf("podman pulled through a regcache with client_auth without a login:\n%s", out)
	} else if lower := strings.ToLower(out); !strings.Contains(lower, "unauthorized") && !strings.Contains(lower, "authentication required") {
		t.Errorf("podman was refused, but not for want of a login:\n%s", tailLines(out, 10))
	}
	// The client's command line carries the password (as in the login
	// tests), so it is not given to the world's secret scan; regcache's
	// own log is checked below.
	w.mustRun(t, pullTimeout, env, bin, "login", "--cert-dir", certDir, "--username", user, "--password", password, rc.host())
	pull := podmanPuller(t, w, policy, env, "--cert-dir", certDir)
	for _, img := range images {
		if got := pull(t, img); got != img.want {
			t.Errorf("podman pulled docker.io/%s:%s with digest %q, upstream has %s", img.repo, img.tag, got, img.want)
		}
	}
	rc.stop()
	if strings.Contains(readFile(t, rc.proc.log), password) {
		t.Error("the client password appears in regcache's log")
	}
}

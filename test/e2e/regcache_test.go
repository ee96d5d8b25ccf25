package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/regcache/regcache/internal/testhub"
)

// regcacheConfig is what a test varies in regcache's config file.
type regcacheConfig struct {
	upstreamURL string // the fake hub, configured as docker.io
	user        string
	password    string
	// passwordFile puts the password in a file (password_file) instead of
	// the environment (password_env); both paths must keep it secret.
	passwordFile bool
	tagTTL       string
	// cert makes regcache serve HTTPS with it (tls:).
	cert *testhub.Cert
	// htpasswd makes clients log in (client_auth:), except for the
	// anonymous registries.
	htpasswd  string
	anonymous []string
	// extra is appended to the config right after docker.io's entry, so
	// it can add keys to that entry (at four spaces: mirrors, reserve),
	// more registries (at two) or top-level keys (at none).
	extra string
	// name tells replicas apart (data dir, config, logs); "" is "regcache".
	name string
	// replica makes this regcache one replica of a cluster: its store is
	// the shared S3 bucket and it coordinates through Redis.
	replica *replicaConfig
	// storage, when set, replaces storage: {root: <data dir>} (YAML flow
	// style); env is added to regcache's environment (the object store's
	// credentials).
	storage string
	env     []string
}

// replicaConfig is what the replicas of one cluster share.
type replicaConfig struct {
	s3         *testhub.S3Server
	redis      *testhub.Redis
	secretFile string
}

// regcache is a regcache server process on a fixed loopback port and data
// dir, so that it can be killed and restarted in place.
type regcache struct {
	w       *world
	cfg     regcacheConfig
	port    int
	dataDir string
	cfgPath string
	env     []string
	proc    *proc
}

const hubPasswordEnv = "REGCACHE_E2E_HUB_PASSWORD"

func startRegcache(t *testing.T, w *world, cfg regcacheConfig) *regcache {
	t.Helper()
	recordBuildInputs()
	if regcacheBuild.err != nil {
		t.Fatal(regcacheBuild.err)
	}
	if cfg.tagTTL == "" {
		cfg.tagTTL = "5m"
	}
	if cfg.name == "" {
		cfg.name = "regcache"
	}
	r := &regcache{
		w:       w,
		cfg:     cfg,
		dataDir: w.mkdir(cfg.name + "-data"),
		cfgPath: filepath.Join(w.mkdir(cfg.name+"-etc"), "regcache.yaml"),
		env:     w.baseEnv(cfg.env...),
	}
	if rp := cfg.replica; rp != nil {
		// The S3 credentials reach regcache as the AWS SDK's chain finds
		// them, and must stay out of every log like the hub's password.
		r.env = append(r.env, rp.s3.Env()...)
		w.addSecret(rp.s3.AccessKey, rp.s3.SecretKey)
	}
	auth := ""
	if cfg.user != "" {
		w.addSecret(cfg.user, cfg.password)
		if cfg.passwordFile {
			pf := filepath.Join(filepath.Dir(r.cfgPath), "hub-password")
			if err := os.WriteFile(pf, []byte(cfg.password+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			auth = fmt.Sprintf("    auth: {username: %s, password_file: %s}\n", strconv.Quote(cfg.user), strconv.Quote(pf))
		} else {
			r.env = append(r.env, hubPasswordEnv+"="+cfg.password)
			auth = fmt.Sprintf("    auth: {username: %s, password_env: %s}\n", strconv.Quote(cfg.user), hubPasswordEnv)
		}
	}
	// A free port can be taken by someone else before regcache binds it;
	// only the first start may move to another port (a restart must keep
	// it, daemons are configured with it).
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		r.port = freePort(t)
		if err = r.writeConfig(auth); err != nil {
			t.Fatal(err)
		}
		// Retry only when regcache exited (as on a bind error), not when
		// it hung.
		var exited bool
		if exited, err = r.tryStart(t); err == nil || !exited {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.stop)
	return r
}

func (r *regcache) writeConfig(auth string) error {
	// debug logging on purpose: the secret scan is only meaningful if
	// regcache logs as much as it ever will.
	storage := r.cfg.storage
	if storage == "" {
		storage = fmt.Sprintf("{root: %s}", strconv.Quote(r.dataDir))
	}
	if rp := r.cfg.replica; rp != nil {
		storage = fmt.Sprintf("{root: %s, s3: {bucket: %s, endpoint: %s, path_style: true, prefix: %s}}",
			strconv.Quote(r.dataDir), rp.s3.Bucket, strconv.Quote(rp.s3.Endpoint), fleetS3Prefix)
	}
	yaml := fmt.Sprintf(`listen: "127.0.0.1:%d"
storage: %s
tag_ttl: %s
default_registry: docker.io
log_level: debug
registries:
  docker.io:
    url: %s
%s%s`, r.port, storage, r.cfg.tagTTL, strconv.Quote(r.cfg.upstreamURL), auth, r.cfg.extra)
	if rp := r.cfg.replica; rp != nil {
		yaml += fmt.Sprintf("cluster: {redis: %s, advertise: %s, secret_file: %s}\n",
			rp.redis.Addr, strconv.Quote(r.url()), strconv.Quote(rp.secretFile))
	}
	if r.cfg.htpasswd != "" {
		yaml += fmt.Sprintf("client_auth: {htpasswd: %s, anonymous_registries: [%s]}\n", strconv.Quote(r.cfg.htpasswd), strings.Join(r.cfg.anonymous, ", "))
	}
	if c := r.cfg.cert; c != nil {
		yaml += fmt.Sprintf("tls: {certificate: %s, key: %s}\n", strconv.Quote(c.CertFile), strconv.Quote(c.KeyFile))
	}
	return os.WriteFile(r.cfgPath, []byte(yaml), 0o644)
}

// host is what clients put in image references: 127.0.0.1:PORT.
func (r *regcache) host() string { return fmt.Sprintf("127.0.0.1:%d", r.port) }

func (r *regcache) url() string {
	if r.cfg.cert != nil {
		return "https://" + r.host()
	}
	return "http://" + r.host()
}

// client is an HTTP client that trusts regcache's certificate, if it has one.
func (r *regcache) client() *http.Client {
	if r.cfg.cert == nil {
		return http.DefaultClient
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.cfg.cert.Pool}}}
}

// start launches the server and waits until GET /v2/ answers 200.
func (r *regcache) start(t *testing.T) {
	t.Helper()
	if _, err := r.tryStart(t); err != nil {
		t.Fatal(err)
	}
}

// tryStart starts the server; on failure it says whether the process had
// exited by itself.
func (r *regcache) tryStart(t *testing.T) (exited bool, err error) {
	t.Helper()
	r.proc = startProc(t, r.cfg.name, r.w.logFile(r.cfg.name), r.env,
		regcacheBuild.bin, "serve", "--config", r.cfgPath)
	err = waitFor(t.Context(), 30*time.Second, r.proc, func() error {
		code, err := httpGetStatus(t.Context(), r.client(), r.url()+"/v2/")
		if err != nil {
			return err
		}
		if code != http.StatusOK && !(code == http.StatusUnauthorized && r.cfg.htpasswd != "") {
			return fmt.Errorf("GET /v2/: %d", code)
		}
		if r.proc.exited() {
			return errors.New("something else answers on regcache's port")
		}
		return nil
	})
	if err != nil {
		exited = r.proc.exited()
		r.proc.stop(5 * time.Second)
		return exited, fmt.Errorf("regcache did not come up on %s: %v\n%s", r.host(), err, r.logTail())
	}
	return false, nil
}

// stop saves /metrics into the logs (for the secret scan), then stops the
// server gracefully. Safe to call more than once.
func (r *regcache) stop() {
	if r.proc == nil || r.proc.exited() {
		return
	}
	r.saveMetrics()
	r.proc.stop(10 * time.Second)
}

// kill9 kills the server without letting it clean up anything.
func (r *regcache) kill9() { r.proc.kill9() }

// restart starts a new server on the same port, config and data dir.
func (r *regcache) restart(t *testing.T) {
	t.Helper()
	r.stop()
	r.start(t)
}

func (r *regcache) saveMetrics() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out := r.w.logFile(r.cfg.name + "-metrics")
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.url()+"/metrics", nil)
	resp, err := r.client().Do(req)
	if err != nil {
		_ = os.WriteFile(out, []byte("GET /metrics: "+err.Error()), 0o644)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	_ = os.WriteFile(out, append([]byte(fmt.Sprintf("GET /metrics: %s\n", resp.Status)), b...), 0o644)
}

func (r *regcache) logTail() string {
	b, _ := os.ReadFile(r.proc.log)
	return tailLines(string(b), 40)
}

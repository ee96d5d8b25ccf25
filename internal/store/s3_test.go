package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/testhub"
)

// The object layout is what operators see in the bucket and what lifecycle
// rules are written against: keep it as documented.
func TestS3Layout(t *testing.T) {
	srv := testhub.StartS3(t)
	s := openTestS3(t, srv, S3Options{Prefix: "/cache/eu/"})
	d := commitBlob(t, s, []byte("layer"))
	if err := s.PutMeta(t.Context(), "tags/docker.io/library/alpine/_tags/3.19/0f", []byte("x")); err != nil {
		t.Fatal(err)
	}
	c, err := s.Open(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	h := d.Encoded()
	for _, key := range []string{
		"cache/eu/blobs/sha256/" + h[:2] + "/" + h,
		"cache/eu/meta/tags/docker.io/library/alpine/_tags/3.19/0f",
	} {
		if _, err := srv.Client.HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: &key}); err != nil {
			t.Errorf("%s: %v", key, err)
		}
	}
	// The access marker is written in the background.
	marker := "cache/eu/access/sha256/" + h[:2] + "/" + h
	waitFor(t, func() bool {
		_, err := srv.Client.HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: &marker})
		return err == nil
	})
}

// A process killed mid-download leaves an incomplete multipart upload,
// never an object under the content key; the sweep aborts it once stale,
// and leaves a young one (another replica's download) alone.
func TestS3AbandonedUpload(t *testing.T) {
	srv := testhub.StartS3(t)
	s := openTestS3(t, srv, S3Options{})
	data := randomBytes(t, 2*testPartSize+10)
	d := digest.FromBytes(data)
	w, err := s.Create(t.Context(), d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	// Everything but the last bytes, as if the process died now: never
	// committed, never closed.
	if _, err := w.Write(data[:len(data)-10]); err != nil {
		t.Fatal(err)
	}
	mustNotExist(t, s, d, "mid-upload")
	key, _ := s.blobKey(d)
	waitFor(t, func() bool { return len(listUploads(t, srv, s)) == 1 })
	if got := listUploads(t, srv, s); got[0] != key {
		t.Fatalf("upload under %q, want the content key %q", got[0], key)
	}

	if n, err := s.sweepUploads(t.Context(), time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("a young upload was swept: %d, %v", n, err)
	}
	// Collect sweeps uploads older than staleUploadAge.
	if _, err := s.Collect(t.Context(), 1<<40, 1<<40, time.Now().Add(staleUploadAge+time.Hour)); err != nil {
		t.Fatal(err)
	}
	if left := listUploads(t, srv, s); len(left) != 0 {
		t.Fatalf("stale uploads left: %v", left)
	}
	mustNotExist(t, s, d, "after the sweep")
}

// An object store that cannot be reached gives errors marked
// ErrUnavailable, with the default timeouts, not a hang.
func TestS3Unreachable(t *testing.T) {
	addr, err := testhub.FreeAddr("127.0.0.1") // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	refused := openTestS3(t, &testhub.S3Server{Endpoint: "http://" + addr, Bucket: "b", Region: "us-east-1", AccessKey: "a", SecretKey: "s"}, S3Options{})

	// A server that accepts connections and never answers.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	fast := s3Timeouts{dial: time.Second, tls: time.Second, header: 200 * time.Millisecond, stall: time.Second, op: 2 * time.Second, part: 2 * time.Second}
	silent := openTestS3(t, &testhub.S3Server{Endpoint: "http://" + l.Addr().String(), Bucket: "b", Region: "us-east-1", AccessKey: "a", SecretKey: "s"}, S3Options{timeouts: fast})

	for name, s := range map[string]*S3{"refused": refused, "silent": silent} {
		t.Run(name, func(t *testing.T) {
			// The bound here is the test's, far above the store's own.
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			d := digest.FromString("x")
			_, statErr := s.Stat(ctx, d)
			_, openErr := s.Open(ctx, d)
			_, getErr := s.GetMeta(ctx, "links/x")
			putErr := s.PutMeta(ctx, "links/x", nil)
			_, collectErr := s.Collect(ctx, 0, 0, time.Now())
			data := randomBytes(t, testPartSize+1)
			w, _ := s.Create(ctx, digest.FromBytes(data), int64(len(data)))
			_, writeErr := w.Write(data)
			commitErr := w.Commit(ctx)
			w.Close()
			if ctx.Err() != nil {
				t.Fatal("the store did not give up before the test's deadline")
			}
			for op, err := range map[string]error{"Stat": statErr, "Open": openErr, "GetMeta": getErr, "PutMeta": putErr,
				"Collect": collectErr, "Write or Commit": errors.Join(writeErr, commitErr)} {
				if !errors.Is(err, ErrUnavailable) {
					t.Errorf("%s = %v, want ErrUnavailable", op, err)
				}
			}
		})
	}
}

// After two calls that the object store left unanswered, the next is
// refused at once by the breaker, without reaching the store, and still
// reads as ErrUnavailable, so the server answers 503 without waiting.
func TestS3BreakerOpensOnASilentStore(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	fast := s3Timeouts{dial: time.Second, tls: time.Second, header: 200 * time.Millisecond, stall: time.Second, op: 5 * time.Second, part: 5 * time.Second}
	s := openTestS3(t, &testhub.S3Server{Endpoint: "http://" + l.Addr().String(), Bucket: "b", Region: "us-east-1", AccessKey: "a", SecretKey: "s"}, S3Options{timeouts: fast})
	d := digest.FromString("x")
	for i := range 2 {
		if _, err := s.Stat(t.Context(), d); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("call %d = %v, want ErrUnavailable", i, err)
		}
	}
	before := conns.Load()
	_, err = s.Stat(t.Context(), d)
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, errStoreBackoff) {
		t.Fatalf("third call = %v, want ErrUnavailable from the breaker", err)
	}
	if n := conns.Load() - before; n != 0 {
		t.Fatalf("the refused call opened %d connections to the store", n)
	}
}

// behindProxy opens a store that reaches srv through an HTTP proxy that
// hands each request to through, in front of the real server.
func behindProxy(t *testing.T, srv *testhub.S3Server, opt S3Options, through func(w http.ResponseWriter, r *http.Request, next http.Handler)) *S3 {
	target, _ := url.Parse(srv.Endpoint)
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { through(w, r, rp) }))
	t.Cleanup(proxy.Close)
	t.Cleanup(proxy.CloseClientConnections)
	return openTestS3(t, &testhub.S3Server{Endpoint: proxy.URL, Bucket: srv.Bucket, Region: srv.Region, AccessKey: srv.AccessKey, SecretKey: srv.SecretKey}, opt)
}

// Content issues GETs lazily: the open GET serves reads from the start
// even after http.ServeContent's seeks to the end and back, and a Seek
// elsewhere costs one ranged GET on the next Read.
func TestS3ReadsAreLazy(t *testing.T) {
	srv := testhub.StartS3(t)
	var mu sync.Mutex
	var gets []string
	s := behindProxy(t, srv, S3Options{}, func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		if r.Method == http.MethodGet {
			mu.Lock()
			gets = append(gets, "GET "+r.Header.Get("Range"))
			mu.Unlock()
		}
		next.ServeHTTP(w, r)
	})
	data := randomBytes(t, 1<<20)
	d := commitBlob(t, s, data)
	c, err := s.Open(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	c.Seek(0, io.SeekEnd)
	c.Seek(0, io.SeekStart)
	io.ReadFull(c, buf)
	c.Seek(5000, io.SeekStart)
	if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, data[5000:5100]) {
		t.Fatalf("read at 5000: %v", err)
	}
	io.ReadFull(c, buf) // continues the same GET
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"GET ", "GET bytes=5000-"}; strings.Join(gets, ",") != strings.Join(want, ",") {
		t.Fatalf("GETs %q, want %q", gets, want)
	}
}

// A GET whose body stops arriving is cut after the stall timeout; the
// object store is real, behind a proxy that stops forwarding.
func TestS3StalledRead(t *testing.T) {
	srv := testhub.StartS3(t)
	var stall atomic.Bool
	opt := S3Options{timeouts: defaultS3Timeouts}
	opt.timeouts.stall = 300 * time.Millisecond
	s := behindProxy(t, srv, opt, func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		if r.Method == http.MethodGet && stall.Load() {
			w = &stallingWriter{ResponseWriter: w, after: 1000, done: r.Context().Done()}
		}
		next.ServeHTTP(w, r)
	})
	data := randomBytes(t, 1<<20)
	d := commitBlob(t, s, data)
	if !bytes.Equal(readBlob(t, s, d), data) {
		t.Fatal("content differs through the proxy")
	}
	stall.Store(true)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := s.Open(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n, err := io.Copy(io.Discard, c)
	if !errors.Is(err, ErrUnavailable) || ctx.Err() != nil {
		t.Fatalf("read %d bytes of a stalled GET: %v (test deadline: %v)", n, err, ctx.Err())
	}
}

// stallingWriter passes the first bytes of a response body, then blocks
// until the request ends.
type stallingWriter struct {
	http.ResponseWriter
	after int
	done  <-chan struct{}
}

func (w *stallingWriter) Write(p []byte) (int, error) {
	if len(p) <= w.after {
		w.after -= len(p)
		return w.ResponseWriter.Write(p)
	}
	w.ResponseWriter.Write(p[:w.after])
	w.after = 0
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
	<-w.done
	return 0, errors.New("stalled")
}

// With redirect on, the store signs URLs that a plain HTTP client can
// fetch, and that stop working after their expiry.
func TestS3Redirect(t *testing.T) {
	srv := testhub.StartS3(t)
	plain := openTestS3(t, srv, S3Options{})
	if _, ok := Store(plain).(Redirector); ok {
		t.Fatal("a store without storage.s3.redirect is a Redirector")
	}
	st, err := OpenS3(t.Context(), S3Options{Bucket: srv.Bucket, Region: srv.Region, Endpoint: srv.Endpoint, PathStyle: true,
		Prefix: plain.prefix, Redirect: true, Credentials: plain.client.Options().Credentials})
	if err != nil {
		t.Fatal(err)
	}
	r, ok := st.(Redirector)
	if !ok {
		t.Fatal("storage.s3.redirect: the store is not a Redirector")
	}
	data := randomBytes(t, 100_000)
	d := commitBlob(t, st, data)

	get, err := r.BlobURL(t.Context(), d, http.MethodGet, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(get, srv.SecretKey) {
		t.Fatal("the secret key is in the URL")
	}
	resp, err := http.Get(get)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("GET presigned: %d, %d bytes", resp.StatusCode, len(body))
	}
	// The client reads the blob without regcache: signing the GET is what
	// records the read, so eviction does not take a blob in use.
	h := d.Encoded()
	marker := plain.prefix + "access/sha256/" + h[:2] + "/" + h
	waitFor(t, func() bool {
		_, err := srv.Client.HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: &marker})
		return err == nil
	})
	head, err := r.BlobURL(t.Context(), d, http.MethodHead, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	resp, err = http.Head(head)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(data)) {
		t.Fatalf("HEAD presigned: %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	// A URL signed for HEAD does not answer GET, nor does a tampered one.
	for name, u := range map[string]string{"HEAD URL used for GET": head, "tampered": strings.Replace(get, "X-Amz-Signature=", "X-Amz-Signature=0", 1)} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", name, resp.StatusCode)
		}
	}
	if _, err := r.BlobURL(t.Context(), d, http.MethodPut, time.Minute); err == nil {
		t.Fatal("a PUT URL was signed")
	}
	if _, err := r.BlobURL(t.Context(), d, http.MethodGet, 8*24*time.Hour); err == nil {
		t.Fatal("an expiry beyond SigV4's 7 days was accepted")
	}

	short, err := r.BlobURL(t.Context(), d, http.MethodGet, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Expiry is checked in whole seconds against the signing time.
	time.Sleep(2100 * time.Millisecond)
	resp, err = http.Get(short)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("expired URL: %d, want 403", resp.StatusCode)
	}
}

// Eviction on S3 follows the access markers, which any replica refreshes,
// and keeps what was used recently.
func TestS3Collect(t *testing.T) {
	srv := testhub.StartS3(t)
	s := openTestS3(t, srv, S3Options{})
	// A second replica on the same bucket and prefix.
	other := openTestS3(t, srv, S3Options{Prefix: s.prefix})
	kb := func(c byte) []byte { return bytes.Repeat([]byte{c}, 1000) }
	a := commitBlob(t, s, kb('a'))
	b := commitBlob(t, s, kb('b'))
	c := commitBlob(t, other, kb('c'))
	dd := commitBlob(t, s, kb('d'))
	// Markers have the object store's one-second resolution.
	time.Sleep(1100 * time.Millisecond)
	// a is read through the other replica: its marker makes it the most
	// recently used.
	content, err := other.Open(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	content.Close()
	marker, _ := s.accessKey(a)
	waitFor(t, func() bool {
		_, err := srv.Client.HeadObject(t.Context(), &s3.HeadObjectInput{Bucket: &srv.Bucket, Key: &marker})
		return err == nil
	})

	now := time.Now()
	// Everything was used within recentGrace: nothing goes, even at 0.
	st, err := s.Collect(t.Context(), 0, 0, now.Add(time.Minute))
	if err != nil || st.Evicted != 0 || st.Bytes != 4000 || st.Blobs != 4 || !st.Walked {
		t.Fatalf("in use: %+v %v", st, err)
	}
	// Under the mark, within s3RewalkEvery: the running size (the last
	// listing, which saw the other replica's commit too) answers.
	st, err = s.Collect(t.Context(), 5000, 4000, now.Add(2*time.Minute))
	if err != nil || st.Walked || st.Bytes != 4000 {
		t.Fatalf("under the mark: %+v %v", st, err)
	}
	// An hour later, over the mark: the three never read since their
	// commit go before a, oldest first; two are enough to reach low.
	st, err = s.Collect(t.Context(), 3500, 2000, now.Add(time.Hour))
	if err != nil || !st.Walked || st.Evicted != 2 || st.EvictedBytes != 2000 {
		t.Fatalf("collect: %+v %v", st, err)
	}
	if _, err := s.Stat(t.Context(), a); err != nil {
		t.Fatalf("the blob read most recently was evicted: %v", err)
	}
	left := 0
	for _, d := range []digest.Digest{b, c, dd} {
		if _, err := s.Stat(t.Context(), d); err == nil {
			left++
		}
	}
	if left != 1 {
		t.Fatalf("%d of the unread blobs left, want 1", left)
	}
	// readSince sees a read that happened after the listing.
	if !s.readSince(t.Context(), strings.TrimPrefix(marker, s.prefix+"access/"), time.Now()) {
		t.Fatal("a fresh marker is not seen as a recent read")
	}
}

// Credentials and region come from the AWS SDK's default chain: the
// environment, or a profile in the shared files. A wrong secret gives an
// error that does not contain it.
func TestS3CredentialChain(t *testing.T) {
	srv := testhub.StartS3(t)
	dir := t.TempDir()
	clean := func() {
		for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION"} {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
		t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "none"))
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none"))
		t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	}
	open := func(t *testing.T) Store {
		st, err := OpenS3(t.Context(), S3Options{Bucket: srv.Bucket, Endpoint: srv.Endpoint, PathStyle: true, Prefix: "chain/" + randomHex(t, 4)})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	t.Run("environment", func(t *testing.T) {
		clean()
		for _, kv := range srv.Env() {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v)
		}
		if err := open(t).PutMeta(t.Context(), "k", []byte("v")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("shared files", func(t *testing.T) {
		clean()
		creds := filepath.Join(dir, "credentials")
		os.WriteFile(creds, []byte("[cache]\naws_access_key_id = "+srv.AccessKey+"\naws_secret_access_key = "+srv.SecretKey+"\n"), 0o600)
		conf := filepath.Join(dir, "config")
		os.WriteFile(conf, []byte("[profile cache]\nregion = us-east-1\n"), 0o600)
		t.Setenv("AWS_SHARED_CREDENTIALS_FILE", creds)
		t.Setenv("AWS_CONFIG_FILE", conf)
		t.Setenv("AWS_PROFILE", "cache")
		if err := open(t).PutMeta(t.Context(), "k", []byte("v")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		clean()
		wrong := "wrong-secret-" + randomHex(t, 8)
		t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
		t.Setenv("AWS_SECRET_ACCESS_KEY", wrong)
		st := open(t)
		err := st.PutMeta(t.Context(), "k", []byte("v"))
		if err == nil {
			t.Fatal("a wrong secret was accepted")
		}
		if errors.Is(err, ErrUnavailable) {
			t.Errorf("a refused signature counts as unavailable: %v", err)
		}
		_, statErr := st.Stat(t.Context(), digest.FromString("x"))
		for _, e := range []error{err, statErr} {
			if e == nil || strings.Contains(e.Error(), wrong) {
				t.Fatalf("error %v: nil, or contains the secret", e)
			}
		}
	})
}

func TestOpenS3ConfigErrors(t *testing.T) {
	t.Setenv("AWS_REGION", "")
	os.Unsetenv("AWS_REGION")
	t.Setenv("AWS_DEFAULT_REGION", "")
	os.Unsetenv("AWS_DEFAULT_REGION")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	tests := []struct {
		opt  S3Options
		want string
	}{
		{S3Options{}, "storage.s3.bucket"},
		{S3Options{Bucket: "b", Region: "r", Endpoint: "127.0.0.1:9000"}, "storage.s3.endpoint"},
		{S3Options{Bucket: "b", Region: "r", Endpoint: "ftp://x"}, "storage.s3.endpoint"},
		{S3Options{Bucket: "b", Region: "r", Prefix: "a//b"}, "storage.s3.prefix"},
		{S3Options{Bucket: "b", Region: "r", Prefix: "a/../b"}, "storage.s3.prefix"},
		{S3Options{Bucket: "b"}, "storage.s3.region"},
	}
	for _, tc := range tests {
		_, err := OpenS3(t.Context(), tc.opt)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error naming %s", tc.opt, err, tc.want)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A large blob streams through a bounded buffer: the writer allocates a
// few parts, not the blob.
func TestS3WriterMemoryIsBounded(t *testing.T) {
	srv := testhub.StartS3(t)
	s := openTestS3(t, srv, S3Options{})
	const size = 64 << 20
	// The content is generated, so the test itself holds 1 MiB of it.
	chunk := randomBytes(t, 1<<20)
	h := digest.Canonical.Digester()
	for range size / len(chunk) {
		h.Hash().Write(chunk)
	}
	d := h.Digest()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	w, err := s.Create(t.Context(), d, size)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for range size / len(chunk) {
		if _, err := w.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("writing %d MiB in %d MiB parts allocated %.1f MiB", size>>20, testPartSize>>20, float64(alloc)/(1<<20))
	if alloc > 4*testPartSize {
		t.Fatalf("writing %d MiB allocated %d MiB", size>>20, alloc>>20)
	}
	if n, err := s.Stat(t.Context(), d); err != nil || n != size {
		t.Fatalf("Stat = %d, %v", n, err)
	}
}

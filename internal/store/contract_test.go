package store

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/testhub"
)

// testPartSize is S3's smallest part, so a few MiB exercise multipart
// uploads in the tests.
const testPartSize = 5 << 20

// backend is one Store implementation under the contract.
type backend struct {
	name string
	open func(t *testing.T) Store
	// leftovers counts what in-flight writes left behind: temp files, or
	// incomplete multipart uploads.
	leftovers func(t *testing.T, s Store) int
}

func fsBackend() backend {
	return backend{
		name: "fs",
		open: func(t *testing.T) Store {
			s, err := OpenFS(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		leftovers: func(t *testing.T, s Store) int { return countFiles(t, filepath.Join(s.(*FS).Root(), "tmp")) },
	}
}

func s3Backend(srv *testhub.S3Server) backend {
	return backend{
		name:      "s3",
		open:      func(t *testing.T) Store { return openTestS3(t, srv, S3Options{}) },
		leftovers: func(t *testing.T, s Store) int { return len(listUploads(t, srv, s.(*S3))) },
	}
}

// openTestS3 opens a store on srv under a prefix of its own, so tests
// sharing a server do not see each other's objects.
func openTestS3(t *testing.T, srv *testhub.S3Server, opt S3Options) *S3 {
	t.Helper()
	opt.Bucket, opt.Region, opt.Endpoint, opt.PathStyle = srv.Bucket, srv.Region, srv.Endpoint, true
	if opt.Prefix == "" {
		opt.Prefix = "t/" + strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()) + "-" + randomHex(t, 4)
	}
	if opt.Credentials == nil {
		opt.Credentials = credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, "")
	}
	if opt.partSize == 0 {
		opt.partSize = testPartSize
	}
	st, err := OpenS3(t.Context(), opt)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := st.(*s3Redirect); ok {
		return r.S3
	}
	return st.(*S3)
}

func listUploads(t *testing.T, srv *testhub.S3Server, s *S3) []string {
	t.Helper()
	out, err := srv.Client.ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{Bucket: &srv.Bucket, Prefix: &s.prefix})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, *u.Key)
	}
	return keys
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", b)
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStoreContract runs one table of behaviours against every backend:
// what the rest of regcache relies on, whatever holds the bytes.
func TestStoreContract(t *testing.T) {
	srv := testhub.StartS3(t)
	for _, b := range []backend{fsBackend(), s3Backend(srv)} {
		for _, tc := range contract {
			t.Run(b.name+"/"+tc.name, func(t *testing.T) { tc.run(t, b, b.open(t)) })
		}
	}
}

var contract = []struct {
	name string
	run  func(t *testing.T, b backend, s Store)
}{
	{"visible only after commit", func(t *testing.T, b backend, s Store) {
		for _, size := range []int{0, 1000, 2*testPartSize + 12345} {
			data := randomBytes(t, size)
			d := digest.FromBytes(data)
			w, err := s.Create(t.Context(), d, int64(size))
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if _, err := w.Write(data); err != nil {
				t.Fatal(err)
			}
			mustNotExist(t, s, d, "before Commit")
			if err := w.Commit(t.Context()); err != nil {
				t.Fatal(err)
			}
			if got := readBlob(t, s, d); !bytes.Equal(got, data) {
				t.Fatalf("%d bytes: read back %d different bytes", size, len(got))
			}
			if n, err := s.Stat(t.Context(), d); err != nil || n != int64(size) {
				t.Fatalf("Stat = %d, %v; want %d", n, err, size)
			}
		}
	}},
	{"unknown size streams", func(t *testing.T, b backend, s Store) {
		data := randomBytes(t, 2*testPartSize+1)
		d := digest.FromBytes(data)
		w, _ := s.Create(t.Context(), d, -1)
		defer w.Close()
		// Odd-sized writes cross part boundaries.
		for rest := data; len(rest) > 0; {
			n := min(777_777, len(rest))
			if _, err := w.Write(rest[:n]); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		if err := w.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(readBlob(t, s, d), data) {
			t.Fatal("content differs")
		}
	}},
	// The digest is verified where content enters regcache (the upstream
	// package's readers); the store checks the size it was promised.
	{"size mismatch is discarded", func(t *testing.T, b backend, s Store) {
		good := randomBytes(t, testPartSize+100)
		d := digest.FromBytes(good)
		tests := []struct {
			name  string
			size  int64
			write []byte
		}{
			{"truncated", int64(len(good)), good[:len(good)-1]},
			{"truncated small", 10, []byte("hello")},
			{"declared size wrong", int64(len(good)) + 1, good},
			{"declared size small", 3, good},
		}
		for _, tc := range tests {
			w, err := s.Create(t.Context(), d, tc.size)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = w.Write(tc.write)
			if err := w.Commit(t.Context()); !errors.Is(err, ErrSizeMismatch) {
				t.Errorf("%s: Commit = %v", tc.name, err)
			}
			if err := w.Close(); err != nil {
				t.Errorf("%s: Close = %v", tc.name, err)
			}
			mustNotExist(t, s, d, tc.name)
		}
		if n := b.leftovers(t, s); n != 0 {
			t.Fatalf("%d in-flight writes left after failed commits", n)
		}
	}},
	{"close without commit leaves nothing", func(t *testing.T, b backend, s Store) {
		data := randomBytes(t, 2*testPartSize+5)
		d := digest.FromBytes(data)
		w, _ := s.Create(t.Context(), d, int64(len(data)))
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		mustNotExist(t, s, d, "after Close without Commit")
		if n := b.leftovers(t, s); n != 0 {
			t.Fatalf("%d in-flight writes left after Close", n)
		}
		if _, err := w.Write([]byte("x")); err == nil {
			t.Fatal("Write after Close accepted")
		}
	}},
	{"write after commit is refused", func(t *testing.T, b backend, s Store) {
		data := []byte("committed once")
		w, _ := s.Create(t.Context(), digest.FromBytes(data), int64(len(data)))
		defer w.Close()
		w.Write(data)
		if err := w.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte("x")); err == nil {
			t.Fatal("write after commit accepted")
		}
	}},
	{"concurrent commits of one digest", func(t *testing.T, b backend, s Store) {
		for _, size := range []int{4096, testPartSize + 1} {
			data := randomBytes(t, size)
			d := digest.FromBytes(data)
			const writers = 4
			var wg sync.WaitGroup
			errs := make([]error, writers)
			start := make(chan struct{})
			for i := range writers {
				wg.Go(func() {
					w, err := s.Create(t.Context(), d, int64(size))
					if err != nil {
						errs[i] = err
						return
					}
					defer w.Close()
					if _, err := w.Write(data); err != nil {
						errs[i] = err
						return
					}
					<-start
					errs[i] = w.Commit(t.Context())
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("%d bytes, writer %d: %v", size, i, err)
				}
			}
			if !bytes.Equal(readBlob(t, s, d), data) {
				t.Fatalf("%d bytes: content differs after concurrent commits", size)
			}
			if n := b.leftovers(t, s); n != 0 {
				t.Fatalf("%d in-flight writes left after concurrent commits", n)
			}
		}
	}},
	{"seek and range reads", func(t *testing.T, b backend, s Store) {
		data := randomBytes(t, 3<<20)
		d := commitBlob(t, s, data)
		c, err := s.Open(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if c.Size() != int64(len(data)) {
			t.Fatalf("Size = %d", c.Size())
		}
		buf := make([]byte, 1000)
		steps := []struct {
			off    int64
			whence int
			want   int64
		}{
			{0, io.SeekEnd, int64(len(data))},
			{12345, io.SeekStart, 12345},
			{1000, io.SeekCurrent, 14345}, // after reading 1000 at 12345: 13345 + 1000
			{-1000, io.SeekEnd, int64(len(data)) - 1000},
			{0, io.SeekStart, 0},
		}
		for _, st := range steps {
			pos, err := c.Seek(st.off, st.whence)
			if err != nil || pos != st.want {
				t.Fatalf("Seek(%d, %d) = %d, %v; want %d", st.off, st.whence, pos, err, st.want)
			}
			if pos == int64(len(data)) {
				if n, err := c.Read(buf); n != 0 || err != io.EOF {
					t.Fatalf("Read at end = %d, %v", n, err)
				}
				continue
			}
			if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, data[pos:pos+1000]) {
				t.Fatalf("read at %d: %v", pos, err)
			}
		}

		// http.ServeContent answers Range requests from the Content.
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := s.Open(r.Context(), d)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			defer c.Close()
			http.ServeContent(w, r, "", time.Time{}, c)
		}))
		defer srv.Close()
		n := len(data)
		ranges := []struct {
			header string
			status int
			want   []byte
		}{
			{"", 200, data},
			{"bytes=100-199", 206, data[100:200]},
			{"bytes=-10", 206, data[n-10:]},
			{fmt.Sprintf("bytes=%d-", n-5), 206, data[n-5:]},
			{fmt.Sprintf("bytes=%d-", n+5), 416, nil},
		}
		for _, rg := range ranges {
			req, _ := http.NewRequest("GET", srv.URL, nil)
			if rg.header != "" {
				req.Header.Set("Range", rg.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != rg.status || (rg.want != nil && !bytes.Equal(body, rg.want)) {
				t.Fatalf("Range %q: %d, %d bytes, %v; want %d, %d bytes", rg.header, resp.StatusCode, len(body), err, rg.status, len(rg.want))
			}
		}
	}},
	{"not found", func(t *testing.T, b backend, s Store) {
		d := digest.FromString("never stored")
		mustNotExist(t, s, d, "absent")
		if _, err := s.GetMeta(t.Context(), "tags/docker.io/library/none/_tags/1/0f"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("GetMeta = %v", err)
		}
		if err := s.Delete(t.Context(), d); err != nil {
			t.Fatalf("Delete of absent content = %v", err)
		}
		if err := s.DeleteMeta(t.Context(), "links/none"); err != nil {
			t.Fatalf("DeleteMeta of absent record = %v", err)
		}
		if _, err := s.Stat(t.Context(), digest.Digest("sha256:nothex")); err == nil || errors.Is(err, ErrNotFound) {
			t.Fatalf("Stat of an invalid digest = %v", err)
		}
	}},
	{"delete", func(t *testing.T, b backend, s Store) {
		d := commitBlob(t, s, []byte("short-lived"))
		if err := s.Delete(t.Context(), d); err != nil {
			t.Fatal(err)
		}
		mustNotExist(t, s, d, "after Delete")
	}},
	{"meta", func(t *testing.T, b backend, s Store) {
		tests := []struct {
			key   string
			valid bool
		}{
			{"tags/docker.io/library/alpine/_tags/3.19/0f", true},
			{"tags/127.0.0.1:5000/a/b/_tags/latest/aa", true},
			{"manifests/sha256/" + digest.FromString("m").Encoded(), true},
			{"links/docker.io/library/alpine/sha256/ab", true},
			{"../escape", false},
			{"tags/../../x", false},
			{"/abs", false},
			{"a//b", false},
			{"a/./b", false},
			{"", false},
		}
		for _, tc := range tests {
			err := s.PutMeta(t.Context(), tc.key, []byte("v1"))
			if (err == nil) != tc.valid {
				t.Fatalf("PutMeta(%q) = %v, valid = %v", tc.key, err, tc.valid)
			}
			if !tc.valid {
				if _, err := s.GetMeta(t.Context(), tc.key); err == nil || errors.Is(err, ErrNotFound) {
					t.Fatalf("GetMeta(%q) = %v, want an invalid-key error", tc.key, err)
				}
				continue
			}
			if err := s.PutMeta(t.Context(), tc.key, []byte("v2")); err != nil {
				t.Fatal(err)
			}
			if got, err := s.GetMeta(t.Context(), tc.key); err != nil || string(got) != "v2" {
				t.Fatalf("GetMeta(%q) = %q, %v", tc.key, got, err)
			}
			if err := s.DeleteMeta(t.Context(), tc.key); err != nil {
				t.Fatal(err)
			}
			if _, err := s.GetMeta(t.Context(), tc.key); !errors.Is(err, ErrNotFound) {
				t.Fatalf("GetMeta(%q) after delete = %v", tc.key, err)
			}
		}
		// An empty record is a record (repository links are empty).
		if err := s.PutMeta(t.Context(), "links/x", nil); err != nil {
			t.Fatal(err)
		}
		if got, err := s.GetMeta(t.Context(), "links/x"); err != nil || len(got) != 0 {
			t.Fatalf("empty record: %q, %v", got, err)
		}
	}},
}

func mustNotExist(t *testing.T, s Store, d digest.Digest, when string) {
	t.Helper()
	if _, err := s.Stat(t.Context(), d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("%s: Stat = %v, want ErrNotFound", when, err)
	}
	if c, err := s.Open(t.Context(), d); !errors.Is(err, ErrNotFound) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("%s: Open = %v, want ErrNotFound", when, err)
	}
}

func commitBlob(t *testing.T, s Store, data []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(data)
	w, err := s.Create(t.Context(), d, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	return d
}

func readBlob(t *testing.T, s Store, d digest.Digest) []byte {
	t.Helper()
	c, err := s.Open(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) != c.Size() {
		t.Fatalf("read %d bytes, Size says %d", len(b), c.Size())
	}
	return b
}

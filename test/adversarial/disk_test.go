package adversarial

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/testhub"
)

// A full disk (issue 13, item 10) once gave clients a 200 cut short, and
// every retry fetched again. Now a blob that cannot be stored is decided
// before its headers and streamed through whole, uncached, and says so;
// cached content keeps being served; nothing half-written is kept; and
// once space is freed (by hand, or by eviction under storage.max_size)
// the next pull stores it. The store is a small tmpfs, mounted in the
// test's private mount namespace.

// mountTmpfs mounts a tmpfs of size bytes on a new directory, unmounted
// when the test ends (after the regcache using it has stopped: cleanups
// run last first).
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Fatalf("mounting a tmpfs on %s: %v: the full-disk tests need root in a private mount namespace (TestMain sets one up); they are never skipped", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// fill writes a file of real bytes (a tmpfs keeps no holes) until at most
// leave bytes are free, or none.
func fill(t *testing.T, path string, leave int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = 0xa5
	}
	for {
		over := freeBytes(t, filepath.Dir(path)) - leave
		if over <= 0 {
			return
		}
		if _, err := f.Write(chunk[:min(over, int64(len(chunk)))]); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			t.Fatal(err)
		}
	}
}

// checkStore fails the test if the store holds a blob that does not hash
// to its name, or a partial download.
func checkStore(t *testing.T, root string) {
	t.Helper()
	for _, f := range storedFiles(t, root) {
		if strings.HasPrefix(f, "tmp/") {
			t.Errorf("a partial download is left: %s", f)
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); !strings.HasSuffix(f, hex.EncodeToString(sum[:])) {
			t.Errorf("%s holds %d bytes that hash to %x", f, len(b), sum)
		}
	}
}

// getBlob fetches a blob and checks it whole; it returns the response.
func getBlob(t *testing.T, rc *regcache, name string, d digest.Digest) *http.Response {
	t.Helper()
	resp, body, err := send(rc.Client, "GET", rc.URL+"/v2/"+name+"/blobs/"+d.String(), nil, nil)
	if err != nil {
		t.Fatalf("blob %s: %v", d, err)
	}
	if resp.StatusCode != 200 || digest.FromBytes(body) != d {
		t.Fatalf("blob %s: %d, %d bytes that hash to %s", d, resp.StatusCode, len(body), digest.FromBytes(body))
	}
	return resp
}

// waitStored waits until the store holds d (a commit follows the last
// byte a client is sent).
func waitStored(t *testing.T, root string, d digest.Digest) {
	t.Helper()
	p := filepath.Join(root, "blobs", "sha256", d.Encoded()[:2], d.Encoded())
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(p); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s was not stored", d)
		}
	}
}

const uncachedNoSpace = `regcache_uncached_total{kind="blob",reason="no_space",registry="hostile.example"}`

func TestFullDisk(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	cached := h.Backend.PushImage(t, "team/cached", "v1", testhub.ImageOptions{LayerSize: 8 << 20, Uncompressed: true})
	big := h.Backend.PushImage(t, "team/big", "v1", testhub.ImageOptions{LayerSize: 16 << 20, Uncompressed: true})
	mid := h.Backend.PushImage(t, "team/mid", "v1", testhub.ImageOptions{LayerSize: 32 << 20, Uncompressed: true})
	release := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	h.on("GET", "/v2/team/mid/blobs/"+mid.Layers[0].String(), paced(h.fetch(t, "team/mid", mid.Layers[0]), 4<<20, release))

	disk := mountTmpfs(t, 128<<20)
	data := filepath.Join(disk, "data")
	filler := filepath.Join(disk, "filler")
	rc := start(t, options{Config: registryConfig(h.URL, ""), Data: data})
	accept := http.Header{"Accept": {acceptManifests}}
	if err := pull(rc.Client, rc.URL, "hostile.example/team/cached", "v1", accept); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"big", "mid"} {
		if resp, body := call(t, rc.Client, "GET", rc.URL+"/v2/hostile.example/team/"+name+"/manifests/v1", accept); resp.StatusCode != 200 {
			t.Fatalf("%s manifest: %d %s", name, resp.StatusCode, body)
		}
	}

	// Not enough room for the 16 MiB blob (regcache keeps 64 MiB free
	// besides what content needs): it is streamed through, uncached, and
	// says so, every time it is asked for.
	fill(t, filler, 72<<20)
	for i := 1; i <= 2; i++ {
		resp := getBlob(t, rc, "hostile.example/team/big", big.Layers[0])
		if resp.Header.Get("X-Regcache-Stored") != "no" {
			t.Errorf("a blob that could not be stored: X-Regcache-Stored %q", resp.Header.Get("X-Regcache-Stored"))
		}
		if n := rc.metric(uncachedNoSpace); n != float64(i) {
			t.Errorf("regcache_uncached_total (no_space) is %v after %d uncached answers", n, i)
		}
	}
	// Cached content is served as ever.
	if err := pull(rc.Client, rc.URL, "hostile.example/team/cached", "v1", accept); err != nil {
		t.Errorf("a cached pull on a full disk: %v", err)
	}
	resp := getBlob(t, rc, "hostile.example/team/cached", cached.Layers[0])
	if resp.Header.Get("X-Regcache") != "hit" {
		t.Errorf("a cached blob on a full disk: X-Regcache %q", resp.Header.Get("X-Regcache"))
	}
	checkStore(t, data)

	// Space comes back: the next pull stores it, and the one after is a hit.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	resp = getBlob(t, rc, "hostile.example/team/big", big.Layers[0])
	if resp.Header.Get("X-Regcache-Stored") != "" {
		t.Errorf("with room again: X-Regcache-Stored %q", resp.Header.Get("X-Regcache-Stored"))
	}
	waitStored(t, data, big.Layers[0])
	if resp := getBlob(t, rc, "hostile.example/team/big", big.Layers[0]); resp.Header.Get("X-Regcache") != "hit" {
		t.Errorf("after it was stored: X-Regcache %q", resp.Header.Get("X-Regcache"))
	}

	// The disk fills while a 32 MiB blob is downloading: its space was
	// reserved when the download began, so it is stored all the same. Two
	// clients: one that keeps up, and one that stops after its first
	// megabyte until the blob is stored, far behind the download's memory
	// window, so that it reads back from the store's file. Both get every
	// byte, verified.
	slow := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10) })
	}}).DialContext}}
	midURL := rc.URL + "/v2/hostile.example/team/mid/blobs/" + mid.Layers[0].String()
	ended := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		resp, body, err := send(rc.Client, "GET", midURL, nil, nil)
		if err != nil || resp.StatusCode != 200 || digest.FromBytes(body) != mid.Layers[0] {
			t.Errorf("the client that kept up with a blob whose disk filled: %v, %d bytes", err, len(body))
		}
	})
	wg.Go(func() {
		resp, err := slow.Get(midURL)
		if err != nil {
			t.Errorf("the client that fell behind: %v", err)
			return
		}
		defer resp.Body.Close()
		h := digest.SHA256.Digester()
		n, err := io.CopyN(h.Hash(), resp.Body, 1<<20)
		if err == nil {
			<-ended
			var m int64
			m, err = io.Copy(h.Hash(), resp.Body)
			n += m
		}
		if err != nil || h.Digest() != mid.Layers[0] {
			t.Errorf("the client that fell behind a blob whose disk filled: %v, %d bytes", err, n)
		}
	})
	time.Sleep(time.Second) // the first 4 MiB are in
	fill(t, filler, 0)
	if free := freeBytes(t, disk); free > 1<<20 {
		t.Fatalf("the disk still has %d bytes free", free)
	}
	close(release)
	waitStored(t, data, mid.Layers[0])
	close(ended)
	wg.Wait()
	if n := rc.metric(uncachedNoSpace); n != 2 {
		t.Errorf("regcache_uncached_total (no_space) is %v after a reserved download on a disk that filled, want 2", n)
	}
	checkStore(t, data)
	if resp := getBlob(t, rc, "hostile.example/team/mid", mid.Layers[0]); resp.Header.Get("X-Regcache") != "hit" {
		t.Errorf("the blob stored as the disk filled: X-Regcache %q", resp.Header.Get("X-Regcache"))
	}
}

// With storage.max_size set, a store that grew past it between
// collections and then found the disk full evicts at once: the blob that
// did not fit is served uncached, and the next pull stores it.
func TestFullDiskEvicts(t *testing.T) {
	t.Parallel()
	h := startHostile(t)
	var old []testhub.Image
	for i := range 3 {
		old = append(old, h.Backend.PushImage(t, fmt.Sprintf("team/old%d", i), "v1", testhub.ImageOptions{LayerSize: 12 << 20, Uncompressed: true}))
	}
	fresh := h.Backend.PushImage(t, "team/new", "v1", testhub.ImageOptions{LayerSize: 12 << 20, Uncompressed: true})
	disk := mountTmpfs(t, 112<<20)
	data := filepath.Join(disk, "data")
	rc := start(t, options{Config: registryConfig(h.URL, ""), Data: data, Storage: "max_size: 30MiB, gc_interval: 1h"})
	accept := http.Header{"Accept": {acceptManifests}}
	for i := range old {
		if err := pull(rc.Client, rc.URL, fmt.Sprintf("hostile.example/team/old%d", i), "v1", accept); err != nil {
			t.Fatal(err)
		}
		waitStored(t, data, old[i].Layers[0])
	}
	if resp, body := call(t, rc.Client, "GET", rc.URL+"/v2/hostile.example/team/new/manifests/v1", accept); resp.StatusCode != 200 {
		t.Fatalf("manifest: %d %s", resp.StatusCode, body)
	}
	// The old content was last used an hour ago (eviction spares what
	// was used in the last 15 minutes: pulls in progress).
	hourAgo := time.Now().Add(-time.Hour)
	filepath.WalkDir(filepath.Join(data, "blobs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			os.Chtimes(p, hourAgo, hourAgo)
		}
		return nil
	})
	// 36 MiB stored, over max_size; 8 MiB more elsewhere leaves 68 MiB
	// free, short of 12 MiB and the 64 MiB kept free. Eviction down to
	// 90% of max_size frees one old layer, and room enough.
	if err := os.WriteFile(filepath.Join(disk, "filler"), make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if resp := getBlob(t, rc, "hostile.example/team/new", fresh.Layers[0]); resp.Header.Get("X-Regcache-Stored") != "no" {
		t.Errorf("a blob that did not fit: X-Regcache-Stored %q", resp.Header.Get("X-Regcache-Stored"))
	}
	for deadline := time.Now().Add(20 * time.Second); rc.metric("regcache_evicted_bytes_total") == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("nothing was evicted when the disk was full and the store over max_size")
		}
	}
	resp := getBlob(t, rc, "hostile.example/team/new", fresh.Layers[0])
	if resp.Header.Get("X-Regcache-Stored") != "" {
		t.Errorf("after eviction: X-Regcache-Stored %q", resp.Header.Get("X-Regcache-Stored"))
	}
	waitStored(t, data, fresh.Layers[0])
	checkStore(t, data)
	// What was evicted is fetched again on demand.
	for i := range old {
		if err := pull(rc.Client, rc.URL, fmt.Sprintf("hostile.example/team/old%d", i), "v1", accept); err != nil {
			t.Errorf("an evicted image: %v", err)
		}
	}
}

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// checkStoreBlobs verifies that every file regcache has published under
// <root>/blobs/sha256/<xx>/<hex> hashes to its name: whatever happened
// before, nothing partial or wrong is ever in a place it could be served
// from. In-flight writes live in <root>/tmp and are not checked. It returns
// the digests found.
func checkStoreBlobs(t *testing.T, root string) map[string]int64 {
	t.Helper()
	found := map[string]int64{}
	dir := filepath.Join(root, "blobs", "sha256")
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == dir {
			return filepath.SkipDir // nothing committed yet
		}
		if err != nil || d.IsDir() {
			return err
		}
		name := d.Name()
		if _, err := hex.DecodeString(name); err != nil || len(name) != 64 {
			t.Errorf("unexpected file in blob store: %s", p)
			return nil
		}
		got, n, err := sha256OfFile(p)
		if err != nil {
			return err
		}
		if got != name {
			t.Errorf("blob store holds wrong content: %s is %d bytes with sha256:%s", p, n, got)
		}
		found["sha256:"+name] = n
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", dir, err)
	}
	return found
}

func sha256OfFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", n, fmt.Errorf("reading %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// tmpBytes is the size of the largest in-flight file in <root>/tmp.
func tmpBytes(root string) int64 {
	entries, _ := os.ReadDir(filepath.Join(root, "tmp"))
	var largest int64
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.Size() > largest {
			largest = fi.Size()
		}
	}
	return largest
}

package app

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/regcache/regcache/internal/testhub"
)

// processCPU is this process's user+system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkColdBlobFromMirror measures the CPU a cold blob costs when it
// comes from a mirror (the default path for official Docker Hub images):
// fetched, verified, stored and streamed to one client. The fake hubs and
// the client run in this process too, so compare runs, not absolute values.
//
//	go test -run '^$' -bench ColdBlobFromMirror -benchtime 5x ./internal/app/
func BenchmarkColdBlobFromMirror(b *testing.B) {
	const layerSize = 128 << 20
	s := newMirrorStack(b, mirrorOptions{})
	layers := make([]digest.Digest, b.N)
	for i := range layers {
		img := s.backend.PushImage(b, "library/big", fmt.Sprint(i), testhub.ImageOptions{LayerSize: layerSize})
		layers[i] = img.Layers[0]
	}
	b.SetBytes(layerSize)
	b.ResetTimer()
	var cpu time.Duration
	for _, l := range layers {
		c0 := processCPU()
		resp, err := http.Get(s.srv.URL + "/v2/library/big/blobs/" + l.String())
		if err != nil {
			b.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || digest.NewDigest(digest.SHA256, h) != l {
			b.Fatalf("blob %s: status %d, err %v", l, resp.StatusCode, err)
		}
		cpu += processCPU() - c0
	}
	b.StopTimer()
	if got := s.mirror.Counts().BlobGETs[layers[0]]; got != 1 {
		b.Fatalf("the mirror served the blob %d times, want 1", got)
	}
	b.ReportMetric(cpu.Seconds()/(float64(b.N)*layerSize/(1<<30)), "cpu-s/GiB")
}

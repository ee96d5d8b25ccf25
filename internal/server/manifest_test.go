package server

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
)

// serveBytes must answer every request exactly as http.ServeContent does:
// its shortcut for plain requests is only a shortcut.
func TestServeBytesAnswersAsServeContent(t *testing.T) {
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	const etag = `"sha256:0123"`
	tests := []struct {
		name   string
		method string
		hdr    map[string]string
		status int
	}{
		{"GET", "GET", nil, 200},
		{"HEAD", "HEAD", nil, 200},
		{"GET with Accept", "GET", map[string]string{"Accept": "application/vnd.oci.image.manifest.v1+json"}, 200},
		{"If-None-Match that matches", "GET", map[string]string{"If-None-Match": etag}, 304},
		{"If-None-Match that matches, HEAD", "HEAD", map[string]string{"If-None-Match": etag}, 304},
		{"If-None-Match that does not", "GET", map[string]string{"If-None-Match": `"sha256:other"`}, 200},
		{"If-None-Match *", "GET", map[string]string{"If-None-Match": "*"}, 304},
		{"If-Match that does not", "GET", map[string]string{"If-Match": `"sha256:other"`}, 412},
		{"If-Match that matches", "GET", map[string]string{"If-Match": etag}, 200},
		{"Range", "GET", map[string]string{"Range": "bytes=0-9"}, 206},
		// Each multipart answer has a boundary of its own, so only its
		// status is compared.
		{"Range, two parts", "GET", map[string]string{"Range": "bytes=0-1,5-6"}, 206},
		{"Range past the end", "GET", map[string]string{"Range": "bytes=1000-"}, 416},
		{"If-Range that matches", "GET", map[string]string{"Range": "bytes=0-9", "If-Range": etag}, 206},
		{"If-Range that does not", "GET", map[string]string{"Range": "bytes=0-9", "If-Range": `"x"`}, 200},
		{"If-Modified-Since", "GET", map[string]string{"If-Modified-Since": time.Now().UTC().Format(http.TimeFormat)}, 200},
		{"If-Unmodified-Since", "GET", map[string]string{"If-Unmodified-Since": time.Now().UTC().Format(http.TimeFormat)}, 200},
	}
	answer := func(serve func(http.ResponseWriter, *http.Request), method string, hdr map[string]string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, "/v2/library/x/manifests/1", nil)
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Etag", etag)
		serve(w, r)
		return w
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := answer(func(w http.ResponseWriter, r *http.Request) { serveBytes(w, r, body) }, tt.method, tt.hdr)
			want := answer(func(w http.ResponseWriter, r *http.Request) {
				http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
			}, tt.method, tt.hdr)
			if got.Code != tt.status || want.Code != tt.status {
				t.Errorf("status: serveBytes %d, ServeContent %d, want %d", got.Code, want.Code, tt.status)
			}
			if strings.HasPrefix(want.Header().Get("Content-Type"), "multipart/") {
				return
			}
			if !reflect.DeepEqual(got.Header(), want.Header()) {
				t.Errorf("headers differ:\nserveBytes   %v\nServeContent %v", got.Header(), want.Header())
			}
			if !bytes.Equal(got.Body.Bytes(), want.Body.Bytes()) {
				t.Errorf("bodies differ:\nserveBytes   %q\nServeContent %q", got.Body.Bytes(), want.Body.Bytes())
			}
		})
	}
}

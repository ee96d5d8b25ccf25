package server

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
)

// Registry API requests skip the mux, but only those it would have sent to
// serveV2 unchanged: everything else keeps the mux's answers.
func TestRegistryRequestsSkipOnlyWhatTheMuxWouldNotChange(t *testing.T) {
	s := New(Options{Router: testRouter(),
		Dashboard: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("dashboard")) })})
	tests := []struct {
		method, target string
		status         int
		location       string // for redirects
		apiVersion     bool   // answered by serveV2
	}{
		{"GET", "/v2/", 200, "", true},
		{"HEAD", "/v2/", 200, "", true},
		{"GET", "/v2", 200, "", true},
		{"GET", "/v2/library/x/tags/list?n=-1", 400, "", true},
		{"GET", "/v2/Library/x/manifests/1", 400, "", true},
		{"DELETE", "/v2/library/x/manifests/1", 405, "", true},
		// The mux cleans these and redirects (307), as before.
		{"GET", "/v2//library/x/manifests/1", 307, "/v2/library/x/manifests/1", false},
		{"GET", "/v2/library/../x/manifests/1", 307, "/v2/x/manifests/1", false},
		{"GET", "/v2/./library/x/manifests/1", 307, "/v2/library/x/manifests/1", false},
		{"GET", "/", 200, "", false},
		{"GET", "/healthz", 200, "", false},
		{"GET", "/v3/", 404, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			w := httptest.NewRecorder()
			r := httptest.NewRequest(tt.method, tt.target, nil)
			// httptest cleans nothing: the path is what a client sent.
			s.ServeHTTP(w, r)
			if w.Code != tt.status {
				t.Errorf("status %d, want %d: %s", w.Code, tt.status, w.Body)
			}
			if got := w.Header().Get("Location"); got != tt.location {
				t.Errorf("Location %q, want %q", got, tt.location)
			}
			if got := w.Header().Get("Docker-Distribution-API-Version") != ""; got != tt.apiVersion {
				t.Errorf("answered by serveV2: %v, want %v", got, tt.apiVersion)
			}
			if w.Header().Get("X-Content-Type-Options") != "nosniff" {
				t.Error("no X-Content-Type-Options: nosniff")
			}
		})
	}
}

func TestSetHeaders(t *testing.T) {
	tests := []struct {
		name string
		kv   []string
		then func(h http.Header)
		want http.Header
	}{
		{"none", nil, nil, http.Header{}},
		{"two", []string{"Content-Type", "a", "Etag", `"d"`}, nil, http.Header{"Content-Type": {"a"}, "Etag": {`"d"`}}},
		{"replaces", []string{"Etag", "new"}, nil, http.Header{"Etag": {"new"}, "Warning": {"old"}}},
		// The values share one array: an Add must not write over the next.
		{"then Add", []string{"Warning", "1", "Etag", "e"}, func(h http.Header) { h.Add("Warning", "2") },
			http.Header{"Warning": {"1", "2"}, "Etag": {"e"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.name == "replaces" {
				h.Set("Etag", "old")
				h.Set("Warning", "old")
			}
			setHeaders(h, tt.kv...)
			if tt.then != nil {
				tt.then(h)
			}
			if !reflect.DeepEqual(h, tt.want) {
				t.Errorf("got %v, want %v", h, tt.want)
			}
		})
	}
}

package store

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

type stubDoer struct {
	err    error
	status int
	calls  int
}

func (s *stubDoer) Do(*http.Request) (*http.Response, error) {
	s.calls++
	if s.err != nil {
		return nil, s.err
	}
	return &http.Response{StatusCode: s.status, Body: http.NoBody}, nil
}

// A store that keeps failing is not asked until its backoff ends, then one
// probe finds whether it is back.
func TestS3Breaker(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	inner := &stubDoer{err: errors.New("i/o timeout")}
	b := &s3Breaker{inner: inner, now: func() time.Time { return now }}
	req := httptest.NewRequest("GET", "http://s3/x", nil)
	steps := []struct {
		name      string
		advance   time.Duration
		heal      bool
		wantCalls int
		wantErr   error
	}{
		{"first failure goes out", 0, false, 1, nil},
		{"second failure goes out and opens", 0, false, 2, nil},
		{"open: refused at once", 0, false, 2, errStoreBackoff},
		{"still open", 500 * time.Millisecond, false, 2, errStoreBackoff},
		{"backoff over: a probe goes out, fails, reopens longer", time.Second, false, 3, nil},
		{"reopened", time.Second, false, 3, errStoreBackoff},
		{"the store is back: the next probe closes it", 2 * time.Second, true, 4, nil},
		{"closed", 0, true, 5, nil},
	}
	for _, st := range steps {
		now = now.Add(st.advance)
		if st.heal {
			inner.err, inner.status = nil, 200
		}
		_, err := b.Do(req)
		if inner.calls != st.wantCalls || (st.wantErr != nil && !errors.Is(err, st.wantErr)) {
			t.Fatalf("%s: calls %d (want %d), err %v (want %v)", st.name, inner.calls, st.wantCalls, err, st.wantErr)
		}
	}
	// 5xx counts as a failure too.
	inner.status = 503
	b.Do(req)
	b.Do(req)
	if _, err := b.Do(req); !errors.Is(err, errStoreBackoff) {
		t.Fatalf("after two 503s: %v", err)
	}
}

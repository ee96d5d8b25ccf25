package app

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/regcache/regcache/internal/cluster"
	"github.com/regcache/regcache/internal/store"
)

// readyKey is the meta record /readyz writes to prove the store writable.
const readyKey = "health/ready"

// readyEvery bounds how often /readyz touches the store: a probe every few
// seconds from a kubelet must not become a write per probe on S3.
const readyEvery = 5 * time.Second

// readiness answers /readyz: 200 when this replica can do its job (the
// config loaded, which it did if it runs, and the store takes a write),
// 503 when it cannot, with the reasons as JSON. /healthz stays a liveness
// probe: a store that is down is no reason to restart regcache.
type readiness struct {
	store store.Store
	coord *cluster.Coordinator // nil alone
	now   func() time.Time

	mu      sync.Mutex
	checked time.Time
	storeOK error
}

type readyReport struct {
	Ready  bool              `json:"ready"`
	Checks map[string]string `json:"checks"`
}

func (rd *readiness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	err := rd.checkStore(r.Context())
	rep := readyReport{Ready: err == nil, Checks: map[string]string{"config": "ok", "store": "ok"}}
	if err != nil {
		// Classified store errors name the backend and key, never a
		// credential (the S3 store redacts what the SDK says).
		rep.Checks["store"] = "not writable: " + err.Error()
	}
	if rd.coord != nil {
		// A replica without its coordinator still serves (every job done
		// here, de-duplicated locally): it stays ready, and says so.
		rep.Checks["coordinator"] = "ok"
		if h := rd.coord.Health(); !h.Up {
			rep.Checks["coordinator"] = "unavailable since " + h.Since.UTC().Format(time.RFC3339) + ": serving alone"
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !rep.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(rep)
}

func (rd *readiness) checkStore(ctx context.Context) error {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	now := rd.now()
	if !rd.checked.IsZero() && now.Sub(rd.checked) < readyEvery {
		return rd.storeOK
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
	defer cancel()
	rd.storeOK = rd.store.PutMeta(ctx, readyKey, []byte(now.UTC().Format(time.RFC3339)))
	rd.checked = now
	return rd.storeOK
}

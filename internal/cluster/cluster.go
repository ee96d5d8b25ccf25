// Package cluster lets several regcache replicas on one shared object store
// behave as one cache. It coordinates through Redis, an existing engine,
// rather than a consensus of its own (docs/adr-cluster.md says why and what
// happens on each failure):
//
//   - leases (SET NX PX, renewed while held) so that one replica does each
//     upstream job: a cold blob's download, a tag's revalidation, a
//     manifest's counted GET; the others learn the holder and wait for it,
//     or stream the blob from it (peer.go);
//   - shared records with an expiry: tag answers, so a tag is revalidated
//     once per tag_ttl fleet-wide, not once per replica;
//   - the origins' pull budgets and pauses (Retry-After), published on
//     every change and kept in every replica's memory (budget.go), so after
//     one replica is told to back off no replica asks that origin again
//     until the time has passed.
//
// Redis being down never stops a replica: every call fails fast (an
// operation timeout, then a short circuit breaker), the caller falls back to
// doing the job itself with local de-duplication, Up reports it for
// /metrics, /readyz and the status page, and the next call after the
// backoff tries Redis again.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Config describes one replica's place in the cluster.
type Config struct {
	// Redis is the coordinator's address, host:port or a redis:// URL.
	Redis    string
	Username string
	Password string
	DB       int
	// Prefix is prepended to every key, so clusters can share a Redis.
	Prefix string
	// Self is this replica's advertised URL, where the others reach its
	// peer endpoint (http://10.0.0.5:5000).
	Self string
	// Secret authenticates the peer endpoint; every replica has the same.
	Secret []byte
	// OpTimeout bounds one Redis call. Default 250 ms.
	OpTimeout time.Duration
	Logger    *slog.Logger
}

// ErrUnavailable is the error of calls made while Redis is unreachable or
// in backoff; callers do the job locally.
var ErrUnavailable = errors.New("cluster coordinator (redis) unavailable")

// Coordinator is this replica's handle on the cluster. It is safe for
// concurrent use.
type Coordinator struct {
	rdb    *redis.Client
	prefix string
	self   string
	secret []byte
	opT    time.Duration
	log    *slog.Logger
	now    func() time.Time

	mu        sync.Mutex
	downUntil time.Time // calls skip Redis until then
	failures  int
	lastErr   string
	changed   time.Time // when Up last changed

	budgets budgets
}

// New connects lazily: it makes no network call, so a replica starts while
// Redis is down.
func New(cfg Config) (*Coordinator, error) {
	if cfg.Self == "" {
		return nil, errors.New("cluster.advertise: must be set to the URL the other replicas reach this one at")
	}
	if len(cfg.Secret) < 32 {
		return nil, errors.New("cluster.secret_file: the shared secret must be at least 32 bytes")
	}
	var opts *redis.Options
	if strings.Contains(cfg.Redis, "://") {
		var err error
		if opts, err = redis.ParseURL(cfg.Redis); err != nil {
			// The URL may hold a password: do not echo it.
			return nil, errors.New("cluster.redis: not a redis:// URL")
		}
	} else {
		opts = &redis.Options{Addr: cfg.Redis}
	}
	if cfg.Username != "" {
		opts.Username = cfg.Username
	}
	if cfg.Password != "" {
		opts.Password = cfg.Password
	}
	if cfg.DB != 0 {
		opts.DB = cfg.DB
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 250 * time.Millisecond
	}
	opts.DialTimeout = 2 * cfg.OpTimeout
	opts.ReadTimeout = cfg.OpTimeout
	opts.WriteTimeout = cfg.OpTimeout
	opts.MaxRetries = 0 // a call fails fast; the caller has a local answer
	opts.PoolTimeout = cfg.OpTimeout
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "regcache:"
	}
	return &Coordinator{
		rdb: redis.NewClient(opts), prefix: cfg.Prefix, self: strings.TrimRight(cfg.Self, "/"), secret: cfg.Secret,
		opT: cfg.OpTimeout, log: cfg.Logger.With("component", "cluster"), now: time.Now, changed: time.Now(),
		budgets: budgets{subs: map[string]func([]byte){}},
	}, nil
}

// Self is this replica's advertised URL.
func (c *Coordinator) Self() string { return c.self }

// Close closes the connection pool.
func (c *Coordinator) Close() error { return c.rdb.Close() }

// Health is the coordinator's state, for metrics, /readyz and the status
// page.
type Health struct {
	Up      bool      `json:"up"`
	Since   time.Time `json:"since"`
	LastErr string    `json:"last_error,omitempty"`
}

// Health reports whether Redis answered the last call.
func (c *Coordinator) Health() Health {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Health{Up: c.failures == 0, Since: c.changed, LastErr: c.lastErr}
}

// Breaker settings: after a failure, skip Redis for a while so that a
// replica whose coordinator is down does not pay a timeout per request.
const (
	backoffMin = time.Second
	backoffMax = 15 * time.Second
)

// call runs one Redis operation with the operation timeout, unless Redis
// is in backoff, and keeps Health.
func (c *Coordinator) call(ctx context.Context, op func(ctx context.Context) error) error {
	c.mu.Lock()
	if c.now().Before(c.downUntil) {
		c.mu.Unlock()
		return ErrUnavailable
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opT)
	defer cancel()
	err := op(ctx)
	if err != nil && errors.Is(err, redis.Nil) {
		err = nil // "no such key" is an answer
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil && !isReplyError(err) {
		if c.failures == 0 {
			c.changed = c.now()
			c.log.Warn("redis unreachable: this replica coordinates nothing and does every job itself until it is back", "err", err)
		}
		c.failures++
		c.lastErr = err.Error()
		c.downUntil = c.now().Add(min(backoffMin<<min(c.failures-1, 4), backoffMax))
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if c.failures > 0 {
		c.changed = c.now()
		c.log.Info("redis reachable again: coordinating with the other replicas")
	}
	c.failures, c.lastErr = 0, ""
	return err
}

// isReplyError reports an error Redis answered with (a script error, a
// wrong type): Redis is up.
func isReplyError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, context.DeadlineExceeded)
}

func token() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

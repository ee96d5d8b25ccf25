package cluster

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Lease is a claim on one job across the cluster. Held says this replica
// has it; otherwise Holder is the advertised URL of the replica that has.
// A held lease is renewed until Release, so a job that outlives the
// lease's ttl keeps it, and a replica that dies loses it within ttl.
type Lease struct {
	Held   bool
	Holder string

	c   *Coordinator
	key string
	// value is what Redis holds under key: ours when Held, the holder's
	// otherwise (TakeOver replaces only that one).
	value string
	stop  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

// Scripts: renew and release only a lease that is still ours; take over
// only the lease the caller saw (or none, if it lapsed meanwhile).
var (
	renewScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0`)
	dropScript  = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)
	takeScript  = redis.NewScript(`local v = redis.call("GET", KEYS[1]) if v == ARGV[1] or not v then redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3]) return 1 end return 0`)
)

// Acquire claims the job name for ttl. It returns ErrUnavailable when
// Redis cannot say; the caller then does the job itself.
func (c *Coordinator) Acquire(ctx context.Context, name string, ttl time.Duration) (*Lease, error) {
	return c.claim(ctx, c.prefix+"lease:"+name, ttl, func(ctx context.Context, key, value string) (bool, error) {
		return c.rdb.SetNX(ctx, key, value, ttl).Result()
	})
}

// TakeOver claims a job whose holder cannot do it: it died and its lease
// has not lapsed yet, or it cannot serve what it holds. Of several
// replicas that find the same holder gone, one takes the job over and the
// others get a Lease that names it, so they follow the new holder instead
// of each doing the job. A held Lease is returned as it is.
func (l *Lease) TakeOver(ctx context.Context, ttl time.Duration) (*Lease, error) {
	if l.Held {
		return l, nil
	}
	return l.c.claim(ctx, l.key, ttl, func(ctx context.Context, key, value string) (bool, error) {
		n, err := takeScript.Run(ctx, l.c.rdb, []string{key}, l.value, value, ttl.Milliseconds()).Int()
		return n == 1, err
	})
}

// claim runs try, which sets key to value if it may, and returns the
// lease: held, renewed until Release, or naming the holder.
func (c *Coordinator) claim(ctx context.Context, key string, ttl time.Duration, try func(ctx context.Context, key, value string) (bool, error)) (*Lease, error) {
	l := &Lease{c: c, key: key, value: c.self + " " + token(), stop: make(chan struct{})}
	var ok bool
	var holder string
	err := c.call(ctx, func(ctx context.Context) error {
		var err error
		ok, err = try(ctx, key, l.value)
		if err != nil || ok {
			return err
		}
		holder, err = c.rdb.Get(ctx, key).Result()
		return err
	})
	if err != nil {
		return nil, err
	}
	if !ok {
		if holder == "" {
			// Released between the two calls: claim it now.
			return c.claim(ctx, key, ttl, try)
		}
		l.value = holder
		l.Holder, _, _ = strings.Cut(holder, " ")
		return l, nil
	}
	l.Held, l.Holder = true, c.self
	l.wg.Add(1)
	go l.renew(ttl)
	return l, nil
}

func (l *Lease) renew(ttl time.Duration) {
	defer l.wg.Done()
	t := time.NewTicker(ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			// A renewal that fails (Redis down) is tried again; if the
			// lease lapses meanwhile another replica may start the same
			// job, which costs a duplicate download, never wrong content.
			_ = l.c.call(context.Background(), func(ctx context.Context) error {
				return renewScript.Run(ctx, l.c.rdb, []string{l.key}, l.value, ttl.Milliseconds()).Err()
			})
		}
	}
}

// Release gives the job back, at once, so a waiting replica need not wait
// for the lease to lapse. Releasing a lease not held does nothing.
func (l *Lease) Release() {
	if l == nil || !l.Held {
		return
	}
	l.once.Do(func() {
		close(l.stop)
		l.wg.Wait()
		_ = l.c.call(context.Background(), func(ctx context.Context) error {
			return dropScript.Run(ctx, l.c.rdb, []string{l.key}, l.value).Err()
		})
	})
}

// HolderOf returns who holds the job name now, "" for no one.
func (c *Coordinator) HolderOf(ctx context.Context, name string) (string, error) {
	var v string
	err := c.call(ctx, func(ctx context.Context) error {
		var err error
		v, err = c.rdb.Get(ctx, c.prefix+"lease:"+name).Result()
		return err
	})
	holder, _, _ := strings.Cut(v, " ")
	return holder, err
}

// Get reads a shared record; found is false when there is none.
func (c *Coordinator) Get(ctx context.Context, key string) (value []byte, found bool, err error) {
	err = c.call(ctx, func(ctx context.Context) error {
		v, err := c.rdb.Get(ctx, c.prefix+"rec:"+key).Bytes()
		if err == nil {
			value, found = v, true
		}
		return err
	})
	return value, found, err
}

// Set writes a shared record that expires after ttl.
func (c *Coordinator) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	return c.call(ctx, func(ctx context.Context) error {
		return c.rdb.Set(ctx, c.prefix+"rec:"+key, value, ttl).Err()
	})
}

// Delete removes a shared record.
func (c *Coordinator) Delete(ctx context.Context, key string) error {
	return c.call(ctx, func(ctx context.Context) error {
		return c.rdb.Del(ctx, c.prefix+"rec:"+key).Err()
	})
}

// Claim is a claim on one job, in plain values, for callers that declare
// what they need from a coordinator as an interface (and tests that fake
// it): Held, or the Holder's URL; Release gives a held job back (and does
// nothing otherwise); TakeOver, when not held, claims the job from a
// Holder that cannot do it.
type Claim struct {
	Held     bool
	Holder   string
	Release  func()
	TakeOver func(ctx context.Context, ttl time.Duration) (Claim, error)
}

// Claim is Acquire, as a Claim.
func (c *Coordinator) Claim(ctx context.Context, name string, ttl time.Duration) (Claim, error) {
	l, err := c.Acquire(ctx, name, ttl)
	if err != nil {
		return Claim{Release: func() {}}, err
	}
	return l.claim(), nil
}

func (l *Lease) claim() Claim {
	cl := Claim{Held: l.Held, Holder: l.Holder, Release: l.Release}
	if !l.Held {
		cl.TakeOver = func(ctx context.Context, ttl time.Duration) (Claim, error) {
			n, err := l.TakeOver(ctx, ttl)
			if err != nil {
				return Claim{Release: func() {}}, err
			}
			return n.claim(), nil
		}
	}
	return cl
}

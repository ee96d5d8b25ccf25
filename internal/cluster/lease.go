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

	c     *Coordinator
	key   string
	value string
	stop  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

// Scripts: renew and release only a lease that is still ours.
var (
	renewScript = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) end return 0`)
	dropScript  = redis.NewScript(`if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0`)
)

// Acquire claims the job name for ttl. It returns ErrUnavailable when
// Redis cannot say; the caller then does the job itself.
func (c *Coordinator) Acquire(ctx context.Context, name string, ttl time.Duration) (*Lease, error) {
	l := &Lease{c: c, key: c.prefix + "lease:" + name, value: c.self + " " + token(), stop: make(chan struct{})}
	var ok bool
	var holder string
	err := c.call(ctx, func(ctx context.Context) error {
		var err error
		ok, err = c.rdb.SetNX(ctx, l.key, l.value, ttl).Result()
		if err != nil || ok {
			return err
		}
		holder, err = c.rdb.Get(ctx, l.key).Result()
		return err
	})
	if err != nil {
		return nil, err
	}
	if !ok {
		if holder == "" {
			// Released between our SETNX and GET: take it now.
			return c.Acquire(ctx, name, ttl)
		}
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

// Claim is Acquire in plain values: held, or the holder's URL; release
// gives a held job back (and does nothing otherwise).
func (c *Coordinator) Claim(ctx context.Context, name string, ttl time.Duration) (held bool, holder string, release func(), err error) {
	l, err := c.Acquire(ctx, name, ttl)
	if err != nil {
		return false, "", func() {}, err
	}
	return l.Held, l.Holder, l.Release, nil
}

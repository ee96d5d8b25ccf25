package cluster

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// budgets keeps the subscribers to each registry's shared budget.
type budgets struct {
	mu   sync.Mutex
	subs map[string]func([]byte)
}

// BudgetState is what is published about one origin's budget: opaque to
// this package (the upstream package's Budget, encoded), stamped with the
// replica that saw it.
type BudgetState struct {
	Registry string          `json:"registry"`
	From     string          `json:"from"`
	Budget   json.RawMessage `json:"budget"`
}

const budgetChannel = "budgets"

// budgetTTL keeps a published budget for replicas that start later; a
// pause never lasts longer (max_retry_after caps it below this).
const budgetTTL = 24 * time.Hour

// PublishBudget tells every replica what this one learnt about an origin's
// budget (a changed count, a 429's pause).
func (c *Coordinator) PublishBudget(ctx context.Context, registry string, budget []byte) error {
	msg, _ := json.Marshal(BudgetState{Registry: registry, From: c.self, Budget: budget})
	return c.call(ctx, func(ctx context.Context) error {
		pipe := c.rdb.TxPipeline()
		pipe.Set(ctx, c.prefix+"budget:"+registry, msg, budgetTTL)
		pipe.Publish(ctx, c.prefix+budgetChannel, msg)
		_, err := pipe.Exec(ctx)
		return err
	})
}

// OnBudget registers fn to receive the budgets other replicas publish for
// registry, and the last one published when Run (re)connects.
func (c *Coordinator) OnBudget(registry string, fn func(budget []byte)) {
	c.budgets.mu.Lock()
	c.budgets.subs[registry] = fn
	c.budgets.mu.Unlock()
}

func (c *Coordinator) deliver(msg []byte) {
	var st BudgetState
	if json.Unmarshal(msg, &st) != nil || st.From == c.self {
		return
	}
	c.budgets.mu.Lock()
	fn := c.budgets.subs[st.Registry]
	c.budgets.mu.Unlock()
	if fn != nil {
		fn(st.Budget)
	}
}

// Run keeps the subscription to the other replicas' budgets until ctx
// ends, reconnecting after Redis comes back; on each (re)connection it
// reads the budgets published meanwhile.
func (c *Coordinator) Run(ctx context.Context) {
	for ctx.Err() == nil {
		c.subscribe(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(backoffMin):
		}
	}
}

func (c *Coordinator) subscribe(ctx context.Context) {
	sub := c.rdb.Subscribe(ctx, c.prefix+budgetChannel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		_ = c.call(ctx, func(context.Context) error { return err }) // record the outage
		return
	}
	c.catchUp(ctx)
	// The channel reconnects by itself after an outage; what was published
	// meanwhile is read back every catchUpEvery.
	ch := sub.Channel(redis.WithChannelHealthCheckInterval(5 * time.Second))
	t := time.NewTicker(catchUpEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.catchUp(ctx)
		case m, ok := <-ch:
			if !ok {
				return
			}
			c.deliver([]byte(m.Payload))
		}
	}
}

// catchUpEvery is how often the published budgets are read back, for
// messages a replica missed while Redis or its connection was down.
const catchUpEvery = 30 * time.Second

// catchUp reads the last budget published for each registry subscribed to.
func (c *Coordinator) catchUp(ctx context.Context) {
	c.budgets.mu.Lock()
	regs := make([]string, 0, len(c.budgets.subs))
	for r := range c.budgets.subs {
		regs = append(regs, r)
	}
	c.budgets.mu.Unlock()
	for _, r := range regs {
		var msg []byte
		if c.call(ctx, func(ctx context.Context) error {
			var err error
			msg, err = c.rdb.Get(ctx, c.prefix+"budget:"+r).Bytes()
			return err
		}) == nil && msg != nil {
			c.deliver(msg)
		}
	}
}

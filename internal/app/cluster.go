package app

import (
	"context"
	"encoding/json"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/regcache/regcache/internal/cluster"
	"github.com/regcache/regcache/internal/config"
	"github.com/regcache/regcache/internal/upstream"
)

// newCoordinator joins the cluster cfg describes: the coordinator, and the
// origins' budgets shared through it, both ways.
func newCoordinator(cfg *config.Cluster, ups map[string]*upstream.Registry, log *slog.Logger) (*cluster.Coordinator, error) {
	advertise, password, secret, err := cfg.Resolve()
	if err != nil {
		return nil, err
	}
	c, err := cluster.New(cluster.Config{Redis: cfg.Redis, Username: cfg.Username, Password: password,
		Prefix: cfg.Prefix, Self: advertise, Secret: secret, Logger: log})
	if err != nil {
		return nil, err
	}
	for name, u := range ups {
		u.OnBudgetChange(func(b upstream.Budget) {
			msg, _ := json.Marshal(b)
			// A budget that cannot be shared now is shared with the next
			// change; every replica keeps its own meanwhile.
			_ = c.PublishBudget(context.Background(), name, msg)
		})
		c.OnBudget(name, func(msg []byte) {
			var b upstream.Budget
			if json.Unmarshal(msg, &b) == nil {
				u.MergeBudget(b)
			}
		})
	}
	log.Info("cluster on", "redis", cfg.Redis, "advertise", advertise)
	return c, nil
}

// coordinatorCollector exports the coordinator's health at scrape time.
type coordinatorCollector struct {
	c  *cluster.Coordinator
	up *prometheus.Desc
}

func newCoordinatorCollector(c *cluster.Coordinator) *coordinatorCollector {
	return &coordinatorCollector{c: c, up: prometheus.NewDesc("regcache_cluster_coordinator_up",
		"1 when the cluster's Redis answered the last call; 0 while this replica coordinates nothing and does every job itself.", nil, nil)}
}

func (cc *coordinatorCollector) Describe(ch chan<- *prometheus.Desc) { ch <- cc.up }

func (cc *coordinatorCollector) Collect(ch chan<- prometheus.Metric) {
	v := 0.0
	if cc.c.Health().Up {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(cc.up, prometheus.GaugeValue, v)
}

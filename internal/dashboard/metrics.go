package dashboard

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The metrics the page reads, as internal/metrics registers them.
const (
	mRequests     = "regcache_requests_total"
	mServed       = "regcache_served_bytes_total"
	mFetched      = "regcache_upstream_fetched_bytes_total"
	mCountedPulls = "regcache_upstream_counted_pulls_total"
	mClientGETs   = "regcache_client_manifest_gets_total"
	mStale        = "regcache_stale_served_total"
	mMirrorHits   = "regcache_mirror_hits_total"
	mStoreBytes   = "regcache_store_bytes"
	mProcessStart = "process_start_time_seconds"
)

// metricSet is one scrape of the registry: for each metric, its series.
type metricSet map[string][]series

type series struct {
	labels map[string]string
	value  float64
}

// gather scrapes g. A partial scrape is kept with its error: the page
// shows what it has.
func gather(g prometheus.Gatherer) (metricSet, error) {
	mfs, err := g.Gather()
	m := metricSet{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			s := series{labels: map[string]string{}}
			for _, lp := range mt.GetLabel() {
				s.labels[lp.GetName()] = lp.GetValue()
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				s.value = mt.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				s.value = mt.GetGauge().GetValue()
			default:
				continue
			}
			m[mf.GetName()] = append(m[mf.GetName()], s)
		}
	}
	return m, err
}

// sum adds the series of name whose labels match the pairs given
// (label, value, label, value, ...).
func (m metricSet) sum(name string, match ...string) float64 {
	var total float64
	for _, s := range m[name] {
		if s.matches(match) {
			total += s.value
		}
	}
	return total
}

// by is sum grouped by the value of one label.
func (m metricSet) by(name, label string, match ...string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range m[name] {
		if s.matches(match) {
			out[s.labels[label]] += s.value
		}
	}
	return out
}

// has reports whether the scrape holds any series of name.
func (m metricSet) has(name string) bool { return len(m[name]) > 0 }

func (s series) matches(pairs []string) bool {
	for i := 0; i+1 < len(pairs); i += 2 {
		if s.labels[pairs[i]] != pairs[i+1] {
			return false
		}
	}
	return true
}
